"""Export a model to ONNX, TorchScript or OpenVINO IR, and prove the artifact matches.

The artifact carries the model's metadata (class names, preprocessing), so every command
accepts it as a model reference. After writing, the artifact is loaded back the way a user
would load it and compared with the eager model on the same inputs.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..backends import onnxruntime as onnx_backend
from ..backends import openvino as openvino_backend
from ..backends import torchscript as torchscript_backend
from ..core.errors import ResnetkitError, UnknownModelError
from ..backends.base import RunnerOptions
from ..run.loading import Classifier, load_model
from ..core.measure import serialized_size_bytes
from ..core.spec import ModelMeta, Step
from .compare import Agreement, agreement, compare_latency, sample_batches
from ..interop.hf import save_folder

FORMATS = {"onnx": ".onnx", "torchscript": torchscript_backend.SUFFIX, "openvino": ".xml", "hf": ""}  # hf: a folder
CHECK_IMAGES = 64


@dataclass
class ExportReport:
    """What was written and how closely it reproduces the source model."""

    name: str  # the artifact's name (the output file's stem)
    source: str  # the model it was exported from
    format: str
    path: str
    size_bytes: int
    eager_size_bytes: int  # fp32 state dict, for comparison
    backend: str  # how the artifact runs by default (its latency is timed so)
    precision: str
    agreement: Agreement  # of the artifact run in exact fp32: the file's fidelity, not the runtime's precision
    eager_latency_ms: float
    latency_ms: float
    batch_size: int
    onnx_checker: str | None = None
    speedup: str = ""  # vs eager, from latencies measured interleaved in one run (or why not comparable)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def artifact_size(path: Path) -> int:
    """Bytes on disk, including an OpenVINO .xml's .bin and all files of an hf folder."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    extra = path.with_suffix(".bin") if path.suffix.lower() == ".xml" else None
    return path.stat().st_size + (extra.stat().st_size if extra and extra.exists() else 0)


def check_output_path(output: str | os.PathLike[str], suffix: str, what: str) -> Path:
    path = Path(output)
    if suffix and path.suffix.lower() != suffix:
        raise ResnetkitError(f"{what} files end in {suffix}: use -o {path.with_suffix(suffix)}.")
    return path


def check_export_request(fmt: str, output: str | os.PathLike[str]) -> Path:
    """The output path, once the format and its suffix are known to fit (before any model is loaded)."""
    if fmt not in FORMATS:
        raise UnknownModelError(f"Unknown export format '{fmt}'. Choose one of: {', '.join(FORMATS)}.")
    return check_output_path(output, FORMATS[fmt], fmt)


def write_artifact(source: Classifier, fmt: str, output: Path, *, dynamic_batch: bool, batch_size: int,
                   opset: int | None) -> str | None:
    """Write ``source`` in ``fmt``; returns the onnx.checker verdict for ONNX."""
    module, meta = source.torch_module("export"), exported_meta(source.meta, fmt, output.stem, dynamic_batch, opset)
    if fmt == "onnx":
        onnx_backend.save_onnx(onnx_backend.to_onnx(module, meta, dynamic_batch=dynamic_batch, batch_size=batch_size,
                                                       opset=opset), output)
        return "passed"
    if fmt == "hf":
        save_folder(module, meta, output)
    elif fmt == "openvino":
        openvino_backend.save_openvino(openvino_backend.to_openvino(module, meta), output)
    else:
        torchscript_backend.save_torchscript(module, meta, output)
    return None


def exported_meta(meta: ModelMeta, fmt: str, name: str, dynamic_batch: bool, opset: int | None) -> ModelMeta:
    """The artifact's metadata: named ``name``, same weights (so the published figures still apply), fp32."""
    settings = {"dynamic_batch": dynamic_batch, "opset": opset} if fmt == "onnx" else {}
    return meta.derived(name, Step("export", fmt, settings), same_weights=True, format=fmt, precision="fp32")


def export_model(
    source: Classifier,
    fmt: str,
    output: str | os.PathLike[str],
    *,
    dynamic_batch: bool = False,
    opset: int | None = None,
    check_dir: str | os.PathLike[str] | None = None,
    check_images: int = CHECK_IMAGES,
    batch_size: int = 1,
) -> ExportReport:
    """Export the loaded model ``source`` to ``output`` in ``fmt`` (onnx | torchscript | openvino | hf) and check it.

    Without ``dynamic_batch`` an ONNX graph has a fixed batch of ``batch_size``; OpenVINO
    and TorchScript artifacts accept any batch size. The check runs ``check_images``
    images from ``check_dir`` (or generated ones) through ``source`` and the artifact as loaded back, in
    exact fp32 (a bf16 default would measure the runtime's precision, not the file); the latency is the
    artifact's as it runs by default."""
    path = check_export_request(fmt, output)
    checker = write_artifact(source, fmt, path, dynamic_batch=dynamic_batch, batch_size=batch_size, opset=opset)
    exported = load_model(path)
    exact = exported if exported.runner.precision == "fp32" else load_model(path, options=RunnerOptions(precision="fp32"))
    fixed_batch = fmt == "onnx" and not dynamic_batch
    batches, inputs = sample_batches(source.meta, check_dir, count=check_images,
                                     batch_size=batch_size if fixed_batch else 32)
    if fixed_batch:
        batches = [b for b in batches if len(b) == batch_size]
    timings = compare_latency({"eager": source, "exported": exported}, batch_size)
    return ExportReport(
        name=exported.meta.name,
        source=source.meta.name,
        format=fmt,
        path=str(path),
        size_bytes=artifact_size(path),
        eager_size_bytes=serialized_size_bytes(source.module),
        backend=exported.runner.backend,
        precision=exported.runner.precision,
        agreement=agreement(source.logits, exact.logits, batches, inputs),
        eager_latency_ms=timings.timings["eager"].p50_ms,
        latency_ms=timings.timings["exported"].p50_ms,
        batch_size=batch_size,
        onnx_checker=checker,
        speedup=timings.speedup("eager", "exported")[1],
    )
