"""Export a model to a file format of the backend registry (ONNX, OpenVINO IR, TorchScript, and any a
plug-in adds) or to a Hugging Face folder, and prove the artifact matches.

The artifact carries the model's metadata (class names, preprocessing), so every command
accepts it as a model reference. After writing, the artifact is loaded back the way a user
would load it and compared with the eager model on the same inputs.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..backends.base import (Backend, ExportSettings, FileWriter, RunnerOptions, export_formats, get_backend,
                             readers_of)
from ..core.device import CPU, Device
from ..core.errors import ResnetkitError, UnknownModelError
from ..run.loading import Classifier, load_model
from ..core.measure import serialized_size_bytes
from ..core.spec import ModelMeta, Step
from .compare import Agreement, agreement, compare_latency, cpu_module, on_device, sample_batches
from ..interop.hf import save_folder

HF_FOLDER = "hf"
CHECK_IMAGES = 64


@dataclass(frozen=True)
class ExportFormat:
    """An entry of export's format table: what the output is called and who writes it."""

    suffix: str  # of the output ("" for a folder)
    writer: FileWriter
    backend: Backend | None = None  # whose file format it is, and the runtime that runs it by default


def _write_hf_folder(module: nn.Module, meta: ModelMeta, path: Path, _: ExportSettings) -> None:
    save_folder(module, meta, path)


def export_table() -> dict[str, ExportFormat]:
    """``--format`` word -> how it is written: every file format a registered backend writes, then ``hf``."""
    table = {name: ExportFormat(fmt.suffixes[0], fmt.export, backend)  # type: ignore[arg-type]
             for name, (backend, fmt) in export_formats().items()}
    # The one extra entry: a Hugging Face folder is no backend file format. interop sits below backends in the
    # layers (run.loading reads these folders through interop.hf, as PyTorch modules), and a folder has no suffix
    # for the registry to look up.
    table[HF_FOLDER] = ExportFormat("", FileWriter(HF_FOLDER, _write_hf_folder))
    return table


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
    onnx_checker: str | None = None  # "passed" for ONNX files (onnx.checker validates them before they are written)
    speedup: str = ""  # vs eager, from latencies measured interleaved in one run (or why not comparable)
    checker: str | None = None  # the validator the file passed before it was written, e.g. onnx.checker
    device: str = "cpu"  # where both latencies were measured
    device_name: str = "CPU"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def artifact_size(path: Path) -> int:
    """Bytes on disk: all files of a folder, or the file and those its format writes beside it (OpenVINO's .bin)."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    companions = {path.with_suffix(s) for f in readers_of(path.suffix.lower()).values() for s in f.companions}
    return path.stat().st_size + sum(c.stat().st_size for c in companions if c.exists())


def check_output_path(output: str | os.PathLike[str], suffix: str, what: str) -> Path:
    path = Path(output)
    if suffix and path.suffix.lower() != suffix:
        raise ResnetkitError(f"{what} files end in {suffix}: use -o {path.with_suffix(suffix)}.")
    return path


def check_export_request(fmt: str, output: str | os.PathLike[str],
                         device: Device = CPU) -> tuple[ExportFormat, Path, Device]:
    """The format, the output path and the device the latencies are measured on, once they are known to fit
    (before any model is loaded): ``device`` where the file's own runtime runs there, the CPU where ``--device
    auto`` chose a GPU it does not run on."""
    formats = export_table()
    if fmt not in formats:
        raise UnknownModelError(f"Unknown export format '{fmt}'. Choose one of: {', '.join(formats)}.")
    chosen = formats[fmt]
    path = check_output_path(output, chosen.suffix, fmt)
    if chosen.backend is not None:
        device = get_backend(chosen.backend.name).fit_device(device)  # installed, and runs there
    return chosen, path, device


def exported_meta(meta: ModelMeta, writer: FileWriter, name: str, settings: ExportSettings) -> ModelMeta:
    """The artifact's metadata: named ``name``, same weights (so the published figures still apply), fp32."""
    recorded = {field: getattr(settings, field) for field in writer.recorded}
    return meta.derived(name, Step("export", writer.name, recorded), same_weights=True, format=writer.name,
                        precision="fp32")


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
    device: Device = CPU,
) -> ExportReport:
    """Export the loaded model ``source`` to ``output`` in ``fmt`` (see :func:`export_table`) and check it.

    Without ``dynamic_batch`` an ONNX graph has a fixed batch of ``batch_size``; OpenVINO
    and TorchScript artifacts accept any batch size. The file is written from an fp32 copy of
    the model on the CPU. The check runs ``check_images`` images from ``check_dir`` (or generated
    ones) through ``source`` and the artifact as loaded back, in exact fp32 (a bf16 default would
    measure the runtime's precision, not the file); the latency is the artifact's as it runs by
    default, next to eager fp32, both on ``device`` where the artifact's runtime runs there."""
    chosen, path, device = check_export_request(fmt, output, device)
    settings = ExportSettings(dynamic_batch=dynamic_batch, batch_size=batch_size, opset=opset)
    chosen.writer.write(cpu_module(source, "export"), exported_meta(source.meta, chosen.writer, path.stem, settings),
                        path, settings)
    exported = load_model(path, options=RunnerOptions(device=device))
    exact = (exported if exported.ran.precision == "fp32"
             else load_model(path, options=RunnerOptions(precision="fp32", device=device)))
    batches, inputs = sample_batches(source.meta, check_dir, count=check_images)
    timings = compare_latency({"eager": on_device(source, device), "exported": exported}, batch_size)
    return ExportReport(
        name=exported.meta.name,
        source=source.meta.name,
        format=fmt,
        path=str(path),
        size_bytes=artifact_size(path),
        eager_size_bytes=serialized_size_bytes(source.module),
        backend=exported.ran.backend,
        precision=exported.ran.precision,
        agreement=agreement(source.logits, exact.logits, batches, inputs),
        eager_latency_ms=timings.timings["eager"].p50_ms,
        latency_ms=timings.timings["exported"].p50_ms,
        batch_size=batch_size,
        onnx_checker="passed" if chosen.writer.checker == "onnx.checker" else None,
        speedup=timings.speedup("eager", "exported")[1],
        checker=chosen.writer.checker,
        device=str(device),
        device_name=device.name,
    )
