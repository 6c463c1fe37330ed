"""TorchScript artifacts (``.torchscript``): a traced module with the metadata in ``_extra_files``.

TorchScript is in maintenance mode in PyTorch; it is offered for runtimes that still load
it (LibTorch in C++, older mobile stacks). Such files run on the ``torchscript`` backend, in fp32.
"""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..core.errors import UnknownModelError
from ..core.fileio import atomic_write
from ..core.spec import ModelMeta
from .base import Backend, ExportSettings, FileFormat, FileWriter, RunnerOptions, register
from .common import meta_from_json, meta_to_json, quiet_torch_jit

SUFFIX = ".torchscript"
META_FILE = "resnetkit_meta.json"


def save_torchscript(module: nn.Module, meta: ModelMeta, path: str | Path) -> Path:
    """Trace ``module`` at batch 1 and write it with ``meta``; traced convnets accept any batch size."""
    example = torch.zeros(1, *meta.preprocessing.input_shape)
    buffer = io.BytesIO()
    with torch.no_grad(), quiet_torch_jit():
        traced = torch.jit.trace(copy.deepcopy(module).float().eval(), example)
        torch.jit.save(traced, buffer, _extra_files={META_FILE: meta_to_json(meta)})
    with atomic_write(path) as handle:
        handle.write(buffer.getvalue())
    return Path(path)


@dataclass
class TorchScriptRunner:
    module: torch.jit.ScriptModule
    precision: str = "fp32"
    backend: str = "torchscript"

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(batch.float()).float()


def _read(path: Path, options: RunnerOptions) -> tuple[TorchScriptRunner, ModelMeta]:
    extra = {META_FILE: ""}
    with quiet_torch_jit():
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    if not extra[META_FILE]:
        raise UnknownModelError(f"{path} is a TorchScript file without resnetkit metadata; export it with 'resnetkit export'.")
    return TorchScriptRunner(module.eval()), meta_from_json(extra[META_FILE], path)


def _write(module: nn.Module, meta: ModelMeta, path: Path, _: ExportSettings) -> None:
    save_torchscript(module, meta, path)


register(Backend("torchscript", "TorchScript files (LibTorch), fp32", ("fp32",),
                 formats=(FileFormat((SUFFIX,), "a TorchScript file", _read,
                                     export=FileWriter("torchscript", _write)),), package="torch"))
