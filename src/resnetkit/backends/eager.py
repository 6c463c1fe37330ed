"""Plain PyTorch eager execution in inference mode: the reference every other backend is checked against."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core.spec import ModelMeta
from .base import FLOAT_DTYPES, Backend, RunnerOptions, register
from .common import torch_threads


@dataclass
class EagerRunner:
    """A torch module in inference mode, with fp32, fp16 or bf16 weights, on ``threads`` intra-op threads."""

    module: nn.Module
    precision: str = "fp32"
    threads: int | None = None
    backend: str = "eager"

    def __post_init__(self) -> None:
        self.dtype = FLOAT_DTYPES[self.precision]
        self.module = self.module.to(dtype=self.dtype).eval()

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch_threads(self.threads):
            return self.module(batch.to(self.dtype)).float()


def _factory(module: nn.Module, meta: ModelMeta, options: RunnerOptions) -> EagerRunner:
    return EagerRunner(module, options.precision or "fp32", options.threads)


register(Backend("eager", "PyTorch eager, inference mode", tuple(FLOAT_DTYPES), _factory, package="torch"))
