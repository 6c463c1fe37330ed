"""Plain PyTorch eager execution in inference mode: the reference every other backend is checked against."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..core.artifacts import ARTIFACT_SUFFIXES, save_artifact
from ..core.device import Device
from ..core.spec import ModelMeta
from .base import FLOAT_DTYPES, Backend, QuantizeData, Quantizer, RunnerOptions, register
from .common import TorchRunner


class EagerRunner(TorchRunner):
    """A torch module in inference mode, with fp32, fp16 or bf16 weights, on the CPU (``threads`` intra-op threads)
    or a GPU (channels-last; fp32 convolutions in TF32, PyTorch's cuDNN default)."""

    backend = "eager"


def default_precision(device: Device) -> str:
    """fp16 on a GPU (tensor cores; agrees with CPU fp32 on the CIFAR-10 test set, docs/gpu.md), fp32 on the CPU."""
    return "fp16" if device.is_cuda else "fp32"


def _factory(module: nn.Module, meta: ModelMeta, options: RunnerOptions) -> EagerRunner:
    return EagerRunner(module, options.precision or default_precision(options.device), device=options.device,
                       threads=options.threads)


def _write_float_artifact(module: nn.Module, meta: ModelMeta, path: Path, _: QuantizeData) -> None:
    """fp16 or bf16 weights (``meta.precision``) as a .pt artifact."""
    save_artifact(path, module.to(FLOAT_DTYPES[meta.precision]), meta)


register(Backend("eager", "PyTorch eager, inference mode (channels-last on a GPU)", tuple(FLOAT_DTYPES), _factory,
                 default_precision=default_precision, devices=("cpu", "cuda"), package="torch",
                 quantizers=tuple(Quantizer(p, ARTIFACT_SUFFIXES[0], _write_float_artifact) for p in ("fp16", "bf16"))))
