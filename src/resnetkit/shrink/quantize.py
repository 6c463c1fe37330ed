"""Post-training quantization: fp16 | bf16 | dynamic-int8 | static-int8, with proof.

Each method writes an artifact for one backend and reports size, latency and predictions
against the fp32 eager model. Static int8 defaults to OpenVINO + NNCF (with exact bias
correction): both int8 paths keep CIFAR ResNet-20 and -32 within 0.5 points of fp32, and
OpenVINO int8 ran resnet50 1.29-1.58x faster than ONNX Runtime QDQ in every interleaved round
(see docs/optimize.md, benchmarks/int8_search.py and optimize_speed.py). An output file
ending in .onnx still selects ONNX Runtime. PT2E with the x86 inductor quantizer could not
quantize torchvision ResNets with torch 2.14 + torchao 0.18.
"""

from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..backends import onnxruntime as onnx_backend
from ..backends import openvino as openvino_backend
from ..backends.base import FLOAT_DTYPES, RunnerOptions, get_backend, make_runner
from ..core.artifacts import ARTIFACT_SUFFIXES, save_artifact
from ..core.errors import ResnetkitError
from ..run.loading import Classifier, load_model
from ..core.measure import serialized_size_bytes
from ..core.spec import ModelMeta, Step
from .compare import (Agreement, agreement, compare_latency, image_batches, labelled_batches, random_weights_notes,
                      sample_batches, top1_accuracy)
from .export import artifact_size, check_output_path

METHODS = ("fp16", "bf16", "dynamic-int8", "static-int8")
CALIBRATION_METHODS = ("histogram", "percentile", "minmax")
DEFAULT_CALIBRATION = {"openvino": "histogram", "onnxruntime": "percentile"}
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
    fp32_backend_latency_ms: float  # the same backend at fp32
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class QuantizeRequest:
    method: str
    backend: str
    output: Path
    calib_dir: str | None
    calib_size: int
    calibration_method: str
    validate_dir: str | None = None  # NNCF accuracy control's labelled images (static-int8 on openvino)
    validate_size: int = 1000
    max_drop: float = DEFAULT_MAX_DROP


def backends_for(method: str) -> list[str]:
    """The backends that can write ``method``, the default first (from :data:`WRITERS`)."""
    return [backend for m, backend in WRITERS if m == method]


def stored_precision(method: str) -> str:
    return method if method in FLOAT_DTYPES else "int8"


def output_suffix(backend: str) -> str:
    """The file a backend's quantized model is written to: its own file format, or a .pt artifact."""
    own = [f.suffixes[0] for f in get_backend(backend).formats if f.own_runtime]
    return own[0] if own else ARTIFACT_SUFFIXES[0]


def resolve_request(method: str, backend: str | None, output: str | os.PathLike[str], calib_dir: str | None,
                    calib_size: int, calibration_method: str | None, *, validate_dir: str | None = None,
                    validate_size: int = 1000, max_drop: float = DEFAULT_MAX_DROP) -> QuantizeRequest:
    """Validate the combination of options before any model is loaded."""
    if method not in METHODS:
        raise QuantizationError(f"Unknown quantization method '{method}'. Choose one of: {', '.join(METHODS)}.")
    backend = backend or _default_backend(method, output)
    if backend not in backends_for(method):
        raise QuantizationError(f"{method} is available with --backend {' or '.join(backends_for(method))}, not '{backend}'.")
    get_backend(backend).check_precision(stored_precision(method))
    if method == "static-int8" and not calib_dir:
        raise QuantizationError("static-int8 needs calibration images: --calib DIR (a few hundred representative "
                                "images, e.g. part of the training set; class sub-folders are fine).")
    if calib_size < 1:
        raise QuantizationError("--calib-size must be at least 1.")
    calibration_method = calibration_method or DEFAULT_CALIBRATION.get(backend, "histogram")
    if calibration_method not in CALIBRATION_METHODS:
        raise QuantizationError(f"Unknown calibration '{calibration_method}'. Choose one of: {', '.join(CALIBRATION_METHODS)}.")
    if validate_dir is not None and (method, backend) != ("static-int8", "openvino"):
        raise QuantizationError("--validate (NNCF accuracy control) works with static-int8 on openvino, "
                                f"not {method} on {backend}.")
    if validate_size < 1 or max_drop <= 0:
        raise QuantizationError("--validate-size must be at least 1 and --max-drop above 0.")
    path = check_output_path(output, output_suffix(backend), f"{backend} {method}")
    return QuantizeRequest(method, backend, path, calib_dir, calib_size, calibration_method, validate_dir,
                           validate_size, max_drop)


def _default_backend(method: str, output: str | os.PathLike[str]) -> str:
    """The backend whose file type ``output`` names, else the method's default (the first)."""
    suffix = Path(output).suffix.lower()
    candidates = backends_for(method)
    return next((b for b in candidates if output_suffix(b) == suffix), candidates[0])


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
) -> QuantizeReport:
    """Quantize the loaded fp32 model ``source`` with ``method``, write the artifact to ``output`` and measure it.
    With ``validate_dir`` (static-int8 on openvino), NNCF's accuracy control puts int8 layers back in float until
    top-1 on up to ``validate_size`` of its labelled images is within ``max_drop`` points of the float model."""
    request = resolve_request(method, backend, output, calib_dir, calib_size, calibration_method,
                              validate_dir=validate_dir, validate_size=validate_size, max_drop=max_drop)
    source.torch_module("quantize")
    calibration = _calibration(source.meta, request)
    step = Step("quantize", method, {"backend": request.backend, "calibration": calibration[1] if calibration else None,
                                     **_control_params(request)})
    meta = source.meta.derived(request.output.stem, step, precision=stored_precision(method))
    WRITERS[(method, request.backend)](copy.deepcopy(source.module), meta, request, calibration[0] if calibration else [])
    quantized = load_model(request.output)
    kernels = int8_kernels(quantized, request)
    check, inputs = sample_batches(source.meta, eval_dir or calib_dir, count=check_images, seed=1)
    timings = compare_latency({"fp32": source, "fp32_backend": _fp32_on_backend(source, request.backend, batch_size),
                               "quantized": quantized}, batch_size)
    report = QuantizeReport(
        name=quantized.meta.name, source=source.meta.name, method=method, backend=request.backend,
        path=str(request.output), precision=quantized.runner.precision,
        size_bytes=artifact_size(request.output), fp32_size_bytes=serialized_size_bytes(source.module),
        batch_size=batch_size,
        fp32_latency_ms=timings.timings["fp32"].p50_ms,
        fp32_backend_latency_ms=timings.timings["fp32_backend"].p50_ms,
        latency_ms=timings.timings["quantized"].p50_ms,
        fp32_backend_speedup=timings.speedup("fp32", "fp32_backend")[1],
        speedup=timings.speedup("fp32", "quantized")[1],
        agreement=agreement(source.logits, quantized.logits, check, inputs),
        int8_kernels=kernels, calibration=calibration[1] if calibration else None,
        notes=_notes(source, quantized, request, eval_dir),
    )
    if eval_dir:
        report.eval_dir = str(eval_dir)
        report.fp32_top1 = top1_accuracy(source, eval_dir, eval_limit)
        report.top1 = top1_accuracy(quantized, eval_dir, eval_limit)
    return report


def _calibration(meta: ModelMeta, request: QuantizeRequest) -> tuple[list[torch.Tensor], str] | None:
    if request.method != "static-int8":
        return None
    batches = image_batches(request.calib_dir, meta, limit=request.calib_size, batch_size=16)  # type: ignore[arg-type]
    count = sum(len(b) for b in batches)
    return batches, f"{count} images from {request.calib_dir}, {request.calibration_method} ranges"


def _control_params(request: QuantizeRequest) -> dict[str, Any]:
    if request.validate_dir is None:
        return {}
    return {"accuracy_control": f"up to {request.validate_size} images of {request.validate_dir}, "
                                f"at most {request.max_drop:g} top-1 points below float"}


def _fp32_on_backend(source: Classifier, backend: str, batch_size: int) -> Classifier:
    """The source's weights on ``backend`` in exact fp32 (built from the loaded module)."""
    options = RunnerOptions(batch_size=batch_size, precision="fp32")
    runner = make_runner(copy.deepcopy(source.module), source.meta, backend, options)  # type: ignore[arg-type]
    return Classifier(source.meta, runner)


def int8_kernels(quantized: Classifier, request: QuantizeRequest) -> dict[str, int]:
    """The int8 kernels the runtime really executes; an int8 method without any is an error."""
    if "int8" not in request.method:
        return {}
    if request.backend == "openvino":
        kernels = openvino_backend.runner_int8_layers(quantized.runner)  # type: ignore[arg-type]
    else:
        import onnx

        kernels = onnx_backend.int8_kernels(onnx.load(str(request.output)))
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


Writer = Callable[[nn.Module, ModelMeta, QuantizeRequest, list[torch.Tensor]], None]


def _write_eager(module: nn.Module, meta: ModelMeta, request: QuantizeRequest, _: list[torch.Tensor]) -> None:
    save_artifact(request.output, module.to(FLOAT_DTYPES[request.method]), meta)


def _write_openvino_float(module: nn.Module, meta: ModelMeta, request: QuantizeRequest, _: list[torch.Tensor]) -> None:
    openvino_backend.save_openvino(openvino_backend.to_openvino(module, meta), request.output, compress_to_fp16=True)


def _write_openvino_int8(module: nn.Module, meta: ModelMeta, request: QuantizeRequest,
                         batches: list[torch.Tensor]) -> None:
    model = openvino_backend.converted(module, meta)
    validation = (labelled_batches(request.validate_dir, meta, limit=request.validate_size)
                  if request.validate_dir is not None else None)
    quantized = openvino_backend.quantize_static(model, batches, request.calibration_method, validation=validation,
                                                 max_drop=request.max_drop)
    openvino_backend.save_openvino(quantized, request.output)


def _write_onnx_static(module: nn.Module, meta: ModelMeta, request: QuantizeRequest, batches: list[torch.Tensor]) -> None:
    model = onnx_backend.to_onnx(module, meta)
    onnx_backend.save_onnx(onnx_backend.quantize_static(model, batches, request.calibration_method), request.output)


def _write_onnx_dynamic(module: nn.Module, meta: ModelMeta, request: QuantizeRequest, _: list[torch.Tensor]) -> None:
    onnx_backend.save_onnx(onnx_backend.quantize_dynamic(onnx_backend.to_onnx(module, meta)), request.output)


# (method, backend) -> writer; per method, the first backend listed is the default
WRITERS: dict[tuple[str, str], Writer] = {
    ("fp16", "openvino"): _write_openvino_float,
    ("fp16", "eager"): _write_eager,
    ("bf16", "openvino"): _write_openvino_float,
    ("bf16", "eager"): _write_eager,
    ("dynamic-int8", "onnxruntime"): _write_onnx_dynamic,
    # OpenVINO/NNCF first: faster than ONNX Runtime QDQ in every interleaved resnet50 round, and
    # within 0.5 points of fp32 on both CIFAR ResNets (docs/optimize.md, benchmarks/int8_search.py)
    ("static-int8", "openvino"): _write_openvino_int8,
    ("static-int8", "onnxruntime"): _write_onnx_static,
}
