"""Post-training quantization: fp16 | bf16 | dynamic-int8 | static-int8, with proof.

Each method writes an artifact for one backend and reports size, latency and predictions
against the fp32 eager model. The methods, the backends that write them, the default backend of
each and their files are the backend registry's :class:`~resnetkit.backends.base.Quantizer`
records. Static int8 defaults to OpenVINO + NNCF (with exact bias correction): both int8 paths
keep CIFAR ResNet-20 and -32 within 0.5 points of fp32, and OpenVINO int8 ran resnet50 1.29-1.58x
faster than ONNX Runtime QDQ in every interleaved round (see docs/optimize.md,
benchmarks/int8_search.py and optimize_speed.py). An output file ending in .onnx still selects
ONNX Runtime. PT2E with the x86 inductor quantizer could not quantize torchvision ResNets with
torch 2.14 + torchao 0.18.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..backends.base import (FLOAT_DTYPES, QuantizeData, Quantizer, RunnerOptions, artifact_size, get_backend,
                             make_runner, quantize_methods, quantizers_of, registered)
from ..core.device import CPU, Device
from ..core.errors import ResnetkitError
from ..run.loading import Classifier, load_model
from ..core.measure import serialized_size_bytes
from ..core.spec import ModelMeta, Step
from .compare import (Agreement, LatencyMethod, agreement, compare_latency, cpu_module, eval_images, image_batches,
                      labelled_batches, latency_method, on_device, random_weights_notes, sample_batches, top1_accuracy)
from .export import check_output_path, removed_on_failure

CALIBRATION_METHODS = ("histogram", "percentile", "minmax")
CHECK_IMAGES = 256
DEFAULT_MAX_DROP = 0.5  # top-1 points NNCF's accuracy control may lose against the float model


class QuantizationError(ResnetkitError):
    """A quantization request that cannot be carried out as asked."""


@dataclass
class QuantizeReport:
    """Before (fp32 eager) and after numbers of one quantization."""

    name: str  # the quantized model's name (the output file's stem)
    source: str  # the model it was made from
    method: str
    backend: str
    path: str
    precision: str  # what the quantized model actually runs at
    size_bytes: int
    fp32_size_bytes: int
    batch_size: int
    fp32_latency_ms: float  # eager fp32
    fp32_backend_latency_ms: float  # the same backend at fp32 (for eager: the eager fp32 reference itself)
    latency_ms: float
    agreement: Agreement
    int8_kernels: dict[str, int] = field(default_factory=dict)
    calibration: str | None = None
    eval_dir: str | None = None
    fp32_top1: float | None = None
    top1: float | None = None
    notes: list[str] = field(default_factory=list)
    # vs fp32 eager, from latencies measured interleaved in one run (or why not comparable)
    fp32_backend_speedup: str = ""
    speedup: str = ""
    # the backend at the float precision it picks by itself on this device (bf16 on CPUs with AVX512-BF16 or
    # AMX for OpenVINO), when that is neither fp32 nor what the quantized model runs: what users get without
    # quantizing. Its speed-up is vs fp32 eager; speedup_vs_default is the quantized model's vs it.
    default_precision: str | None = None
    default_backend_latency_ms: float | None = None
    default_backend_speedup: str = ""
    speedup_vs_default: str = ""
    device: str = "cpu"  # where the latencies were measured
    device_name: str = "CPU"
    eval_images: str | None = None  # what of eval_dir the top-1s are on: "all 10000 images", "500 of 10000 images"
    latency_method: LatencyMethod | None = None  # how the latencies were measured

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class QuantizeRequest:
    method: str
    backend: str
    quantizer: Quantizer
    output: Path
    calib_dir: str | None
    calib_size: int
    calibration_method: str
    validate_dir: str | None = None  # accuracy control's labelled images (quantizers that take them)
    validate_size: int = 1000
    max_drop: float = DEFAULT_MAX_DROP
    device: Device = CPU  # where the latencies are measured


def stored_precision(method: str) -> str:
    return method if method in FLOAT_DTYPES else "int8"


def resolve_request(method: str, backend: str | None, output: str | os.PathLike[str], calib_dir: str | None,
                    calib_size: int, calibration_method: str | None, *, validate_dir: str | None = None,
                    validate_size: int = 1000, max_drop: float = DEFAULT_MAX_DROP,
                    device: Device = CPU) -> QuantizeRequest:
    """Validate the combination of options before any model is loaded. The latencies are measured on ``device``
    where the backend runs there, on the CPU where ``--device auto`` chose a GPU it does not run on."""
    if method not in quantize_methods():
        raise QuantizationError(f"Unknown quantization method '{method}'. Choose one of: "
                                f"{', '.join(quantize_methods())}.")
    writers = {b.name: q for b, q in quantizers_of(method)}
    backend = backend or _default_backend(writers, output)
    if backend not in writers:
        raise QuantizationError(f"{method} is available with --backend {' or '.join(writers)}, not '{backend}'.")
    quantizer, chosen = writers[backend], get_backend(backend)
    chosen.check_precision(stored_precision(method))
    if quantizer.calibration and not calib_dir:
        raise QuantizationError(f"{method} needs calibration images: --calib DIR (a few hundred representative "
                                "images, e.g. part of the training set; class sub-folders are fine).")
    if calib_size < 1:
        raise QuantizationError("--calib-size must be at least 1.")
    calibration_method = calibration_method or quantizer.calibration or CALIBRATION_METHODS[0]
    if calibration_method not in CALIBRATION_METHODS:
        raise QuantizationError(f"Unknown calibration '{calibration_method}'. Choose one of: {', '.join(CALIBRATION_METHODS)}.")
    if validate_dir is not None and not quantizer.accuracy_control:
        controlled = " or ".join(f"{q.method} on {b.name}" for b in registered() for q in b.quantizers
                                 if q.accuracy_control)
        raise QuantizationError(f"--validate (accuracy control) works with {controlled}, not {method} on {backend}.")
    if validate_size < 1:
        raise QuantizationError(f"--validate-size must be at least 1, got {validate_size}.")
    if max_drop <= 0:
        raise QuantizationError(f"--max-drop must be above 0 (top-1 points), got {max_drop:g}.")
    path = check_output_path(output, quantizer.suffix, f"{backend} {method}")
    return QuantizeRequest(method, backend, quantizer, path, calib_dir, calib_size, calibration_method, validate_dir,
                           validate_size, max_drop, chosen.fit_device(device))


def _default_backend(writers: dict[str, Quantizer], output: str | os.PathLike[str]) -> str:
    """The backend whose file type ``output`` names, else the method's default (the first)."""
    suffix = Path(output).suffix.lower()
    return next((b for b, q in writers.items() if q.suffix == suffix), next(iter(writers)))


def quantize(
    source: Classifier,
    method: str,
    output: str | os.PathLike[str],
    *,
    backend: str | None = None,
    calib_dir: str | None = None,
    calib_size: int = 300,
    calibration_method: str | None = None,
    eval_dir: str | None = None,
    eval_limit: int | None = None,
    batch_size: int = 1,
    check_images: int = CHECK_IMAGES,
    validate_dir: str | None = None,
    validate_size: int = 1000,
    max_drop: float = DEFAULT_MAX_DROP,
    device: Device = CPU,
) -> QuantizeReport:
    """Quantize the loaded fp32 model ``source`` with ``method``, write the artifact to ``output`` and measure it.
    With ``validate_dir`` (static-int8 on openvino), NNCF's accuracy control puts int8 layers back in float until
    top-1 on up to ``validate_size`` of its labelled images is within ``max_drop`` points of the float model.
    The file is written from an fp32 copy of the model on the CPU; the latencies are measured on ``device`` where
    the backend runs there (see :func:`resolve_request`)."""
    request = resolve_request(method, backend, output, calib_dir, calib_size, calibration_method,
                              validate_dir=validate_dir, validate_size=validate_size, max_drop=max_drop, device=device)
    # every folder is read before the file is written: a bad one stops the command with nothing written
    check, inputs = sample_batches(source.meta, eval_dir or calib_dir, count=check_images, seed=1)
    evaluated = eval_images(eval_dir, source.meta, eval_limit) if eval_dir else None
    calibration = _calibration(source.meta, request)
    step = Step("quantize", method, {"backend": request.backend, "calibration": calibration[1] if calibration else None,
                                     **_control_params(request)})
    meta = source.meta.derived(request.output.stem, step, precision=stored_precision(method))
    request.quantizer.write(cpu_module(source, "quantize"), meta, request.output,
                            _quantize_data(source.meta, request, calibration))
    with removed_on_failure(request.output):
        # timed on the backend that wrote it, as the rows it is compared with (without --backend, a .pt file
        # would run on auto, another backend)
        quantized = load_model(request.output, backend=request.backend, options=RunnerOptions(device=request.device))
        kernels = int8_kernels(quantized, request)
        default_precision = _backend_default_precision(request, quantized.ran.precision)
        timed = {"fp32": on_device(source, request.device),
                 # the fp32 row of another backend than eager (eager's is the reference)
                 **({"fp32_backend": _float_on_backend(source, request, batch_size, "fp32")}
                    if request.backend != "eager" else {}),
                 **({"default": _float_on_backend(source, request, batch_size, default_precision)}
                    if default_precision else {}),
                 "quantized": quantized}
        timings = compare_latency(timed, batch_size)
        fp32_backend = "fp32_backend" if "fp32_backend" in timed else "fp32"
        report = QuantizeReport(
            name=quantized.meta.name, source=source.meta.name, method=method, backend=request.backend,
            path=str(request.output), precision=quantized.ran.precision,
            size_bytes=artifact_size(request.output), fp32_size_bytes=serialized_size_bytes(source.module),
            batch_size=batch_size,
            fp32_latency_ms=timings.timings["fp32"].p50_ms,
            fp32_backend_latency_ms=timings.timings[fp32_backend].p50_ms,
            latency_ms=timings.timings["quantized"].p50_ms,
            fp32_backend_speedup=timings.speedup("fp32", fp32_backend)[1],
            speedup=timings.speedup("fp32", "quantized")[1],
            agreement=agreement(source.logits, quantized.logits, check, inputs),
            int8_kernels=kernels, calibration=calibration[1] if calibration else None,
            notes=_notes(source, quantized, request, eval_dir),
            device=str(request.device), device_name=request.device.name,
            latency_method=latency_method(timings, timed, _latency_labels(request.backend, method, default_precision),
                                          batch_size),
        )
        if default_precision:
            report.default_precision = default_precision
            report.default_backend_latency_ms = timings.timings["default"].p50_ms
            report.default_backend_speedup = timings.speedup("fp32", "default")[1]
            report.speedup_vs_default = timings.speedup("default", "quantized")[1]
        if eval_dir:
            report.eval_dir, report.eval_images = str(eval_dir), evaluated
            report.fp32_top1 = top1_accuracy(source, eval_dir, eval_limit)
            report.top1 = top1_accuracy(quantized, eval_dir, eval_limit)
        return report


def _latency_labels(backend: str, method: str, default_precision: str | None) -> dict[str, str]:
    """The rows of the latency table, by their key in :func:`quantize`'s timings."""
    return {"fp32": "fp32 eager", "fp32_backend": f"fp32 {backend}", "default": f"{default_precision} {backend}",
            "quantized": f"{method} file"}


def _calibration(meta: ModelMeta, request: QuantizeRequest) -> tuple[list[torch.Tensor], str] | None:
    if not request.quantizer.calibration:
        return None
    batches = image_batches(request.calib_dir, meta, limit=request.calib_size, batch_size=16)  # type: ignore[arg-type]
    count = sum(len(b) for b in batches)
    return batches, f"{count} images from {request.calib_dir}, {request.calibration_method} ranges"


def _control_params(request: QuantizeRequest) -> dict[str, Any]:
    if request.validate_dir is None:
        return {}
    return {"accuracy_control": f"up to {request.validate_size} images of {request.validate_dir}, "
                                f"at most {request.max_drop:g} top-1 points below float"}


def _quantize_data(meta: ModelMeta, request: QuantizeRequest,
                   calibration: tuple[list[torch.Tensor], str] | None) -> QuantizeData:
    validation = (labelled_batches(request.validate_dir, meta, limit=request.validate_size)
                  if request.validate_dir is not None else None)
    return QuantizeData(calibration[0] if calibration else (), request.calibration_method, validation, request.max_drop)


def _backend_default_precision(request: QuantizeRequest, quantized_precision: str) -> str | None:
    """The float precision the request's backend picks by itself on the device, when it is neither fp32 (the
    fp32 row already shows it) nor the quantized model's precision (the quantized row is then the same thing)."""
    precision = get_backend(request.backend).default_precision(request.device)
    return precision if precision not in ("fp32", quantized_precision) else None


def _float_on_backend(source: Classifier, request: QuantizeRequest, batch_size: int, precision: str) -> Classifier:
    """The source's weights on the request's backend at ``precision``, on the device the latencies are measured on."""
    options = RunnerOptions(batch_size=batch_size, precision=precision, device=request.device)
    return Classifier(source.meta, make_runner(cpu_module(source, "quantize"), source.meta, request.backend, options))


def int8_kernels(quantized: Classifier, request: QuantizeRequest) -> dict[str, int]:
    """The int8 kernels the runtime really executes (as the backend that runs the file counts them); an int8
    method without any is an error."""
    if stored_precision(request.method) != "int8":
        return {}
    count = get_backend(quantized.ran.backend).int8_kernels
    kernels = count(quantized.runner) if count is not None else {}
    if not kernels:
        raise QuantizationError(f"{request.output} contains no int8 kernels after the runtime's optimizations: the "
                                "quantization did not take effect, so no speed is reported.")
    return kernels


def _notes(source: Classifier, quantized: Classifier, request: QuantizeRequest, eval_dir: str | None) -> list[str]:
    notes, method = [], request.method
    if method == "dynamic-int8":
        linear = sum(p.numel() for m in source.module.modules() if isinstance(m, nn.Linear) for p in m.parameters())
        total = sum(p.numel() for p in source.module.parameters())
        notes.append(f"dynamic int8 quantizes only Linear/MatMul layers: here the final classifier ({linear:,} of "
                     f"{total:,} weights, {100 * linear / total:.1f} %). The convolutions stay fp32, so do not expect "
                     "a speed-up; use static-int8 for that.")
    ran = quantized.runner.precision
    if method in FLOAT_DTYPES and ran != method:
        notes.append(f"weights are stored in {method}, but {request.backend} computes in {ran} on this CPU "
                     f"(no native {method} arithmetic).")
    if request.calib_dir and not eval_dir:
        notes.append("agreement was measured on images of the calibration folder (give --eval DIR for held-out data).")
    if request.validate_dir is not None:
        notes.append(f"NNCF accuracy control kept int8 layers whose top-1 on {request.validate_dir} stayed within "
                     f"{request.max_drop:g} points of float; the rest run in float (see the int8 kernels above).")
        if eval_dir is not None and Path(eval_dir).resolve() == Path(request.validate_dir).resolve():
            notes.append("--eval is the --validate folder: the top-1 reported was also what the layers were chosen "
                         "by, so it is optimistic; evaluate on images not used to quantize.")
    return notes + random_weights_notes(source.meta)
