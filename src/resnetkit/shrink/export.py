"""Export a model to a file format of the backend registry (ONNX, OpenVINO IR, TorchScript, and any a
plug-in adds) or to a Hugging Face folder, and prove the artifact matches.

The artifact carries the model's metadata (class names, preprocessing), so every command
accepts it as a model reference. After writing, the artifact is loaded back the way a user
would load it and compared with the eager model on the same inputs.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ..backends.base import (Backend, ExportSettings, FileWriter, RunnerOptions, artifact_size, export_formats,
                             get_backend, readers_of)
from ..core.device import CPU, Device
from ..core.errors import OutputError, ResnetkitError, UnknownModelError
from ..core.fileio import check_writable
from ..run.loading import Classifier, load_model
from ..core.measure import serialized_size_bytes
from ..core.spec import ModelMeta, Step
from .compare import (Agreement, LatencyMethod, agreement, compare_latency, cpu_module, eval_images, image_batches,
                      latency_method, on_device, random_weights_notes, sample_batches, top1_accuracy)
from ..interop.hf import CONFIG, PROCESSOR, SAFETENSORS, save_folder

HF_FOLDER = "hf"
HF_FILES = (CONFIG, PROCESSOR, SAFETENSORS)  # what an hf export writes in its folder
CHECK_IMAGES = 64
CALIBRATION_IMAGES = 300


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
    # of the artifact run in exact fp32 (in the precision it stores, for fp16 and int8 files): the file's fidelity,
    # not the runtime's precision; None where the file cannot run on this machine (see ``notes``)
    agreement: Agreement | None
    eager_latency_ms: float | None
    latency_ms: float | None
    batch_size: int
    onnx_checker: str | None = None  # "passed" for ONNX files (onnx.checker validates them before they are written)
    speedup: str = ""  # vs eager, from latencies measured interleaved in one run (or why not comparable)
    checker: str | None = None  # the validator the file passed before it was written, e.g. onnx.checker
    device: str = "cpu"  # where both latencies were measured
    device_name: str = "CPU"
    stored_precision: str = "fp32"  # what the file stores (--precision)
    calibration: str | None = None  # the images int8 was calibrated on
    eval_dir: str | None = None
    source_top1: float | None = None  # on eval_dir, the source model (eager fp32) and the file
    top1: float | None = None
    inspection: dict[str, Any] | None = None  # what was checked without running a file that cannot run here
    eval_images: str | None = None  # what of eval_dir the top-1s are on: "all 10000 images", "500 of 10000 images"
    latency_method: LatencyMethod | None = None  # how the latencies were measured
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_output_path(output: str | os.PathLike[str], suffix: str, what: str) -> Path:
    """``output``, once it has the suffix of the files written and can be written (checked before any work whose
    result would otherwise be lost at the end); ``suffix`` "" is a folder (an hf export)."""
    path = Path(output)
    if suffix and path.suffix.lower() != suffix:
        raise ResnetkitError(f"{what} files end in {suffix}: use -o {path.with_suffix(suffix)}.")
    if not suffix:
        _check_hf_folder(path)
    check_writable(path / CONFIG if not suffix else path)
    return path


def _check_hf_folder(path: Path) -> None:
    """Refuse a file, or a folder holding anything but a previous hf export (whose files would be overwritten)."""
    if path.is_file():
        raise OutputError(f"{path} is a file; give a folder name for --format hf.")
    others = sorted(p.name for p in path.iterdir() if p.name not in HF_FILES) if path.is_dir() else []
    if others:
        shown = ", ".join(others[:5]) + (" ..." if len(others) > 5 else "")
        raise OutputError(f"{path} already holds other files ({shown}); --format hf writes {', '.join(HF_FILES)} "
                          "there. Give a new or empty folder, or a previous hf export to overwrite.")


def remove_artifact(path: Path) -> None:
    """Delete what was written at ``path``: the file and those its format writes beside it (OpenVINO's .bin), or
    the files of an hf folder (and the folder, if that empties it)."""
    if path.is_dir():
        for name in HF_FILES:
            (path / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            path.rmdir()
        return
    companions = {path.with_suffix(s) for f in readers_of(path.suffix.lower()).values() for s in f.companions}
    for file in (path, *companions):
        file.unlink(missing_ok=True)


@contextlib.contextmanager
def removed_on_failure(path: Path) -> Iterator[None]:
    """Remove the artifact at ``path`` if the block fails: a command that stops with an error leaves no output."""
    try:
        yield
    except BaseException:
        remove_artifact(path)
        raise


def onnx_opsets() -> range:
    """The opsets ``--opset`` may ask for: torch.onnx's dynamo exporter writes 18 and up (below, it falls back to
    18) to the newest this torch supports (23 in torch 2.14; it fails, or falls back, above)."""
    from torch.onnx import _constants

    return range(18, _constants.ONNX_MAX_OPSET + 1)


def check_export_request(fmt: str, output: str | os.PathLike[str], device: Device = CPU,
                         precision: str | None = None, calib_dir: str | os.PathLike[str] | None = None,
                         opset: int | None = None) -> tuple[ExportFormat, Path, Device]:
    """The format, the output path and the device the latencies are measured on, once they are known to fit
    (before any model is loaded; a path that cannot be written, an opset torch.onnx cannot write are refused):
    ``device`` where the file's own runtime runs there, the CPU where ``--device
    auto`` chose a GPU it does not run on. ``precision`` must be one the format stores (None: its default, the
    first of its writer's ``precisions``); int8 needs ``calib_dir``."""
    formats = export_table()
    if fmt not in formats:
        raise UnknownModelError(f"Unknown export format '{fmt}'. Choose one of: {', '.join(formats)}.")
    chosen = formats[fmt]
    precision = precision or chosen.writer.precisions[0]
    if precision not in chosen.writer.precisions:
        with_precision = [name for name, f in formats.items() if precision in f.writer.precisions]
        raise ResnetkitError(f"--format {fmt} stores {', '.join(chosen.writer.precisions)}, not {precision}. "
                             f"{precision} files: --format {' or '.join(with_precision) or '-'} (or 'resnetkit quantize').")
    if precision == "int8" and calib_dir is None:
        raise ResnetkitError("int8 needs calibration images: --calib DIR (a few hundred representative images, e.g. "
                             "part of the training set; class sub-folders are fine).")
    if opset is not None and opset not in (opsets := onnx_opsets()):
        raise ResnetkitError(f"--opset {opset} is not one torch.onnx {torch.__version__.split('+')[0]} writes: use "
                             f"an opset from {opsets[0]} to {opsets[-1]} (default: {opsets[0]}).")
    path = check_output_path(output, chosen.suffix, fmt)
    if chosen.backend is not None:
        device = get_backend(chosen.backend.name).fit_device(device)  # installed, and runs there
    return chosen, path, device


def exported_meta(meta: ModelMeta, writer: FileWriter, name: str, settings: ExportSettings,
                  calibration: str | None = None) -> ModelMeta:
    """The artifact's metadata: named ``name``, in the precision it stores; an fp32 file has the same weights (so
    the published figures still apply), an fp16 or int8 one does not."""
    recorded = {name: getattr(settings, name) for name in writer.recorded}
    if calibration is not None:
        recorded["calibration"] = calibration
    return meta.derived(name, Step("export", writer.name, recorded), same_weights=settings.precision == "fp32",
                        format=writer.name, precision=settings.precision)


def _calibration(meta: ModelMeta, calib_dir: str | os.PathLike[str] | None,
                 calib_size: int) -> tuple[list, str | None]:
    """The calibration batches and their description (none without ``calib_dir``)."""
    if calib_dir is None:
        return [], None
    batches = image_batches(calib_dir, meta, limit=calib_size, batch_size=16)
    return batches, f"{sum(len(b) for b in batches)} images from {calib_dir}"


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
    precision: str | None = None,
    calib_dir: str | os.PathLike[str] | None = None,
    calib_size: int = CALIBRATION_IMAGES,
    eval_dir: str | os.PathLike[str] | None = None,
    eval_limit: int | None = None,
) -> ExportReport:
    """Export the loaded model ``source`` to ``output`` in ``fmt`` (see :func:`export_table`) and check it.

    Without ``dynamic_batch`` an ONNX graph has a fixed batch of ``batch_size``; OpenVINO
    and TorchScript artifacts accept any batch size. The file is written from an fp32 copy of
    the model on the CPU. The check runs ``check_images`` images from ``check_dir`` (or generated
    ones) through ``source`` and the artifact as loaded back, in exact fp32 (a bf16 default would
    measure the runtime's precision, not the file); the latency is the artifact's as it runs by
    default, next to eager fp32, both on ``device`` where the artifact's runtime runs there.

    ``precision`` (None: the format's default, fp32 for all but Core ML's fp16) fp16 or int8 stores the file so (where its format does: see ``FileWriter.precisions``); int8
    is calibrated on ``calib_size`` images of ``calib_dir``. Such a file is compared in the precision it stores.
    With ``eval_dir`` (labelled, one sub-folder per class) the top-1 of the source and of the file are measured
    on it. A file that cannot run on this machine (Core ML off macOS) is checked without predictions."""
    chosen, path, device = check_export_request(fmt, output, device, precision, calib_dir, opset)
    precision = precision or chosen.writer.precisions[0]
    # every folder is read before the file is written: a bad one stops the export with nothing written
    batches, inputs = sample_batches(source.meta, check_dir, count=check_images)
    evaluated = eval_images(eval_dir, source.meta, eval_limit) if eval_dir is not None else None
    calibration, described = _calibration(source.meta, calib_dir, calib_size) if precision == "int8" else ([], None)
    settings = ExportSettings(dynamic_batch=dynamic_batch, batch_size=batch_size, opset=opset, precision=precision,
                              calibration=calibration)
    meta = exported_meta(source.meta, chosen.writer, path.stem, settings, described)
    chosen.writer.write(cpu_module(source, "export"), meta, path, settings)
    with removed_on_failure(path):
        if (why := chosen.writer.runs_here()) is not None:
            return _unrun_report(source, fmt, path, meta, chosen.writer, why, batch_size, described)
        exported = load_model(path, options=RunnerOptions(device=device))
        exact = (exported if exported.ran.precision in ("fp32", precision)
                 else load_model(path, options=RunnerOptions(precision="fp32", device=device)))
        timed = {"eager": on_device(source, device), "exported": exported}
        timings = compare_latency(timed, batch_size)
        report = ExportReport(
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
            stored_precision=precision,
            calibration=described,
            latency_method=latency_method(timings, timed, {"eager": "eager", "exported": exported.ran.backend},
                                          batch_size),
            notes=_notes(precision, exported, check_dir, eval_dir) + random_weights_notes(source.meta),
        )
        if eval_dir is not None:
            report.eval_dir, report.eval_images = str(eval_dir), evaluated
            report.source_top1 = top1_accuracy(source, eval_dir, eval_limit)
            report.top1 = top1_accuracy(exported, eval_dir, eval_limit)
        return report


def _notes(precision: str, exported: Classifier, check_dir: str | os.PathLike[str] | None,
           eval_dir: str | os.PathLike[str] | None) -> list[str]:
    notes = []
    if precision != "fp32" and check_dir is None:
        notes.append(f"{precision}: the agreement above is on generated images; give --check-data DIR (real images) "
                     "and --eval DIR (labelled) to see what the precision costs.")
    if precision == "int8" and eval_dir is None:
        notes.append("int8: give --eval DIR (labelled images not used for calibration) to measure the accuracy change.")
    return notes


def _unrun_report(source: Classifier, fmt: str, path: Path, meta: ModelMeta, writer: FileWriter, why: str,
                  batch_size: int, calibration: str | None) -> ExportReport:
    """The report on a file whose runtime is not on this machine: what it holds, checked without running it."""
    return ExportReport(
        name=meta.name, source=source.meta.name, format=fmt, path=str(path), size_bytes=artifact_size(path),
        eager_size_bytes=serialized_size_bytes(source.module), backend=writer.name, precision=meta.precision,
        agreement=None, eager_latency_ms=None, latency_ms=None, batch_size=batch_size, checker=writer.checker,
        speedup="not measured", stored_precision=meta.precision, calibration=calibration,
        inspection=writer.inspect(path) if writer.inspect is not None else None,
        notes=[f"predictions were not run: {why}", *random_weights_notes(source.meta)],
    )
