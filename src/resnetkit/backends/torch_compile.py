"""torch.compile (inductor) backend, on the CPU (fp32 or bf16, weights frozen into constants) or a GPU (fp32,
fp16 or bf16, channels-last, inductor's default mode).

Compilation happens on the first call of each batch shape and takes tens of seconds per model (16 s for resnet50
on an H200, docs/gpu.md), so ``auto`` does not try it; choose it for long-running jobs.
"""

from __future__ import annotations

from torch import nn
import torch

from ..core.device import Device
from ..core.spec import ModelMeta
from .base import Backend, RunnerOptions, register
from .common import TorchRunner
from .eager import default_precision


class CompiledRunner(TorchRunner):
    backend = "compile"

    def __init__(self, module: nn.Module, precision: str = "fp32", *, device: Device, threads: int | None = None) -> None:
        super().__init__(module, precision, device=device, threads=threads)
        # on the CPU, freezing folds the weights into constants (needed for inductor's fused CPU kernels); on a GPU
        # the default mode is what plain torch.compile users run, so it is the one compared with (docs/gpu.md)
        self.compiled = torch.compile(self.module, options=None if device.is_cuda else {"freezing": True})

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.compiled(inputs)


def _factory(module: nn.Module, meta: ModelMeta, options: RunnerOptions) -> CompiledRunner:
    return CompiledRunner(module, options.precision or default_precision(options.device), device=options.device,
                          threads=options.threads)


register(Backend("compile", "torch.compile (inductor); compiles on the first call of each batch size (tens of s)",
                 ("fp32", "bf16", "fp16"), _factory, default_precision=default_precision, devices=("cpu", "cuda"),
                 package="torch", tried_by_auto=False))
