"""ExecuTorch: ``.pte`` programs lowered to XNNPACK (PyTorch's on-device runtime for phones and boards), run back
here by ExecuTorch's Python runtime.

fp32, and int8 through PyTorch's PT2E flow with XNNPACK's own quantizer (per-channel int8 weights, int8
activations), calibrated on the user's images. resnetkit's metadata is a constant method of the program
(``resnetkit_meta``, returning the JSON), which any ExecuTorch runtime can read and none runs by accident.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.errors import UnknownModelError
from ..core.extras import install_hint
from ..core.fileio import atomic_write
from ..core.spec import ModelMeta
from .base import Backend, ExportSettings, FileFormat, FileWriter, RunnerOptions, register
from .common import in_fixed_batches, meta_from_json, meta_to_json, pt2e_int8

META_METHOD = "resnetkit_meta"


def to_executorch(module: nn.Module, meta: ModelMeta, settings: ExportSettings) -> bytes:
    """``module`` as an ExecuTorch program for a fixed batch of ``settings.batch_size``, lowered to XNNPACK, with
    ``meta`` as the constant method ``resnetkit_meta``; int8 quantized with XNNPACK's PT2E quantizer first."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    example = torch.zeros(settings.batch_size, *meta.preprocessing.input_shape)
    if settings.precision == "int8":
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                             get_symmetric_quantization_config)

        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        module = pt2e_int8(module, example, quantizer, settings.calibration)
    program = torch.export.export(module, (example,))
    lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                          constant_methods={META_METHOD: meta_to_json(meta)})
    return lowered.to_executorch().buffer


def _load(path: Path) -> Any:
    from executorch.runtime import Runtime

    return Runtime.get().load_program(path)


def read_meta(program: Any, path: Path) -> ModelMeta:
    if META_METHOD not in program.method_names:
        raise UnknownModelError(f"{path} is an ExecuTorch program without resnetkit metadata (class names, "
                                "preprocessing); export it with 'resnetkit export --format executorch'.")
    return meta_from_json(str(program.load_method(META_METHOD).execute([])[0]), path)


class ExecuTorchRunner:
    """The program's ``forward`` on ExecuTorch's runtime (XNNPACK on the CPU), in slices of the batch size it was
    exported for. One call at a time."""

    backend = "executorch"

    def __init__(self, program: Any, precision: str) -> None:
        self.program, self.precision = program, precision
        self.method = program.load_method("forward")
        self.batch_size = int(self.method.metadata.input_tensor_meta(0).sizes()[0])
        self._lock = threading.Lock()

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with self._lock:
            return in_fixed_batches(self._run, batch.detach().cpu().float().contiguous(), self.batch_size)

    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        return self.method.execute([batch])[0].float().clone()


def _read(path: Path, options: RunnerOptions) -> tuple[ExecuTorchRunner, ModelMeta]:
    program = _load(path)
    meta = read_meta(program, path)
    return ExecuTorchRunner(program, meta.precision or "fp32"), meta


def _write(module: nn.Module, meta: ModelMeta, path: Path, settings: ExportSettings) -> None:
    content = to_executorch(module, meta, settings)
    with atomic_write(path) as handle:
        handle.write(content)


register(Backend("executorch", "ExecuTorch runtime, XNNPACK on the CPU; runs .pte programs", ("fp32", "int8"),
                 formats=(FileFormat((".pte",), "an ExecuTorch program", _read,
                                     export=FileWriter("executorch", _write, ("batch_size", "precision"),
                                                       precisions=("fp32", "int8"))),),
                 package="executorch", imports=("executorch",), install_hint=install_hint("edge"), tried_by_auto=False))
