"""torch.compile (inductor) backend, fp32 or bf16, with weight freezing for inference.

Compilation happens on the first call and takes tens of seconds per model and batch shape
on a small CPU, so ``auto`` does not try it; choose it explicitly for long-running jobs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..core.spec import ModelMeta
from .base import FLOAT_DTYPES, Backend, RunnerOptions, register


@dataclass
class CompiledRunner:
    module: nn.Module
    precision: str = "fp32"
    backend: str = "compile"
    compiled: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.dtype = FLOAT_DTYPES[self.precision]
        self.module = self.module.to(dtype=self.dtype).eval()
        # freezing folds weights into constants (needed for inductor's fused CPU kernels)
        self.compiled = torch.compile(self.module, options={"freezing": True})

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.compiled(batch.to(self.dtype)).float()


def _factory(module: nn.Module, meta: ModelMeta, options: RunnerOptions) -> CompiledRunner:
    return CompiledRunner(module, options.precision or "fp32")


register(Backend("compile", "torch.compile (inductor, frozen weights); compiles on first call (tens of s)",
                 ("fp32", "bf16"), _factory, package="torch", tried_by_auto=False))
