"""OpenVINO: convert a torch module or read an ONNX / IR file, compile for the CPU, quantize with NNCF.

OpenVINO chooses its own inference precision (bf16 on CPUs with AVX512-BF16 or AMX, even
for an fp32 model); runners read back what the compiled model actually uses and report it.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import importlib.util
import io
import logging
import os
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch
from torch import nn

from ..core.device import CPU, Device, usable_cores
from ..core.errors import BackendUnavailableError, UnknownModelError
from ..core.extras import install_hint
from ..core.spec import ModelMeta
from .base import (Backend, ExportSettings, FileFormat, FileWriter, QuantizeData, Quantizer, Runner, RunnerOptions,
                   register)
from .common import (META_KEY, calibration_batches, content_key, converted_on_disk, meta_from_json, meta_to_json,
                     progress_to_stderr)

if TYPE_CHECKING:
    import openvino as ov

log = logging.getLogger(__name__)
META_PATH = [META_KEY, "meta"]
# resnetkit precision -> OpenVINO INFERENCE_PRECISION_HINT, and back
HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
FROM_HINT = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}
INT8_TYPES = ("i8", "u8")
HEAD_STEPS = 6  # nodes between the head's MatMul and the output: Add, FakeQuantize, Convert...


@functools.cache
def import_openvino() -> Any:
    """The ``openvino`` module, imported without its usage telemetry unless the user opted in to it.

    OpenVINO's converter (on import and on every conversion) and NNCF send usage events to Google Analytics unless
    the user opted out (``opt_in_out --opt_out``; no consent file counts as consent). resnetkit converts and
    quantizes as steps of its own commands, not at the user's request of OpenVINO, so in its processes they send
    nothing unless the consent file says yes (``opt_in_out --opt_in``): both fall back to their own stubs when
    ``openvino_telemetry`` cannot be imported. It also took 0.5 s off each conversion of resnet152 (1.0 -> 0.5 s
    on a 2-core Zen 4, offline). Every use of OpenVINO in resnetkit imports it through here."""
    if importlib.util.find_spec("openvino_telemetry") is not None and "openvino.tools.ovc" not in sys.modules:
        from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker

        if OptInChecker().check(enable_opt_in_dialog=False) != ConsentCheckResult.ACCEPTED:
            sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # imports of it raise ImportError
    import openvino as ov

    return ov


@functools.cache
def shared_core() -> ov.Core:
    """The process's one OpenVINO ``Core``, kept alive until exit.

    OpenVINO's CPU plugin gives each ``Core`` an alternate signal stack on the thread that
    loads it, and on destruction restores the one it found. Cores destroyed out of creation
    order (runner A, runner B, A freed, B freed) leave the thread on A's freed stack, and
    the next Python signal handler (Ctrl-C, SIGTERM) crashes the process with SIGSEGV.
    One Core for the whole process, as OpenVINO's docs recommend anyway, never does that."""
    ov = import_openvino()

    return ov.Core()


def to_openvino(module: nn.Module, meta: ModelMeta) -> ov.Model:
    """``module`` as an OpenVINO model with a dynamic batch dimension and ``meta`` attached.

    ``ov.convert_model`` converts the ONNX graph the runtimes share (:func:`.onnxruntime.exported`), so one
    export serves both runtimes when ``auto`` builds both. Converting the module directly instead
    (``ov.convert_model(module, example_input=...)``) took 4.2 s for resnet50 on a Zen 5, against 0.6 s to
    export that graph plus 1.9 s to convert it."""
    ov = import_openvino()

    from .onnxruntime import exported

    graph = exported(module, meta).data
    model = ov.convert_model(str(graph) if isinstance(graph, Path) else io.BytesIO(graph))
    set_meta(model, meta)
    return model


def converted(module: nn.Module, meta: ModelMeta) -> ov.Model:
    """:func:`to_openvino` through the on-disk cache of converted models (:func:`.common.converted_on_disk`):
    converting resnet50 takes about 5 s here, reading it back well under one."""
    ov = import_openvino()

    return converted_on_disk("openvino", content_key(module, meta, torch.__version__, ov.__version__), meta,
                             lambda: to_openvino(module, meta), save_openvino,
                             lambda xml: shared_core().read_model(str(xml)), (".xml", ".bin"))


def set_meta(model: ov.Model, meta: ModelMeta) -> None:
    model.set_rt_info(meta_to_json(meta), META_PATH)


def read_meta(model: ov.Model, path: Path) -> ModelMeta:
    if not model.has_rt_info(META_PATH):
        raise UnknownModelError(f"{path} is an OpenVINO model without resnetkit metadata (class names, "
                                "preprocessing); export it with 'resnetkit export'.")
    return meta_from_json(model.get_rt_info(META_PATH).astype(str), path)


def save_openvino(model: ov.Model, path: str | Path, *, compress_to_fp16: bool = False) -> Path:
    """Write ``path`` (.xml) and its .bin; both appear only when complete (temp dir + rename)."""
    ov = import_openvino()

    target = Path(path)
    if target.suffix.lower() != ".xml":
        raise UnknownModelError(f"OpenVINO models are saved as .xml (+ .bin), not {target.suffix or 'no suffix'}.")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
        staged = Path(tmp) / target.name
        ov.save_model(model, str(staged), compress_to_fp16=compress_to_fp16)
        os.replace(staged.with_suffix(".bin"), target.with_suffix(".bin"))
        os.replace(staged, target)
    return target


def quantize_static(model: ov.Model, batches: Sequence[torch.Tensor], method: str = "histogram", *,
                    preset: str = "performance", fast_bias_correction: bool = False, per_image: bool = False,
                    overflow_fix: str | None = None, ignore_first_last: bool = False,
                    smooth_quant_alpha: float | None = None, target_device: str = "ANY",
                    validation: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
                    max_drop: float = 0.5) -> ov.Model:
    """Static int8 with NNCF post-training quantization on ``batches``.

    Activation ranges come from ``method``: histogram (default) or percentile estimators
    keep outliers from stretching the int8 range; minmax is there for comparison.
    ``preset`` is NNCF's performance (symmetric) or mixed (asymmetric activations);
    ``fast_bias_correction=False`` (default here, not in NNCF) runs NNCF's slower, exact bias
    correction: of the settings tried it lost least on CIFAR ResNet-20/32 (0.02 / 0.01 points,
    NNCF's default fast one 0.05 / 0.63; benchmarks/int8_search.py, docs/optimize.md);
    ``per_image`` feeds the calibration images one at a time; ``overflow_fix`` is NNCF's
    OverflowFix value (None: its default, which halves the first conv's weight range);
    ``ignore_first_last`` keeps the first convolution and the last MatMul in float;
    ``smooth_quant_alpha`` applies SmoothQuant to convolutions; ``target_device`` is NNCF's (its
    CPU_SPR leaves the convolution before each residual Add in float: slower on Zen 4 and 5,
    docs/optimize.md). With ``validation``
    ((images, labels) batches) NNCF's accuracy control reverts layers to float until top-1
    is within ``max_drop`` points of the float model."""
    if importlib.util.find_spec("nncf") is None:
        raise BackendUnavailableError(f"int8 on OpenVINO needs NNCF. {install_hint('optimize')} (or use --backend onnxruntime).")
    # NNCF imports its torch part, and so torch.utils.cpp_extension, which logs "No CUDA runtime is found" on
    # a CUDA build of torch without a GPU: that one logger is quietened, nothing else.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    import nncf

    images = [b.float().contiguous().numpy() for b in batches]
    if per_image:
        images = [image[None] for batch in images for image in batch]
    common = {"preset": nncf.QuantizationPreset(preset), "subset_size": len(images),
              "fast_bias_correction": fast_bias_correction,
              "target_device": nncf.TargetDevice(target_device),
              "model_type": nncf.ModelType.TRANSFORMER if smooth_quant_alpha is not None else None,
              "ignored_scope": _first_and_last_layers(model) if ignore_first_last else None}
    advanced = _advanced_parameters(method, overflow_fix, smooth_quant_alpha)
    with progress_to_stderr():
        quantized = _nncf_quantize(model, images, advanced, common, validation, max_drop)
    if model.has_rt_info(META_PATH):
        quantized.set_rt_info(model.get_rt_info(META_PATH).astype(str), META_PATH)
    return quantized


def _nncf_quantize(model: ov.Model, images: list[Any], advanced: Any, common: dict[str, Any],
                   validation: Sequence[tuple[torch.Tensor, torch.Tensor]] | None, max_drop: float) -> ov.Model:
    """nncf.quantize, or with ``validation`` its accuracy control; NNCF's INFO log lines (to stdout) kept out."""
    import nncf

    level = logging.getLogger("nncf").level
    nncf.set_log_level(logging.WARNING)
    try:
        with signal_stack_kept():
            if validation is None:
                return nncf.quantize(model, nncf.Dataset(images), advanced_parameters=advanced, **common)
            return nncf.quantize_with_accuracy_control(
                model, nncf.Dataset(images), nncf.Dataset([(x.float().numpy(), y.numpy()) for x, y in validation]),
                _top1_fraction, max_drop=max_drop / 100, drop_type=nncf.DropType.ABSOLUTE,
                advanced_quantization_parameters=advanced, **common)
    finally:
        nncf.set_log_level(level)


class _SignalStack(ctypes.Structure):
    """glibc's ``stack_t``."""

    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def _current_signal_stack() -> _SignalStack:
    stack = _SignalStack()
    ctypes.CDLL(None).sigaltstack(None, ctypes.byref(stack))
    return stack


def alternate_signal_stack() -> tuple[int, int, int]:
    """The calling thread's alternate signal stack as (address, flags, size); Linux only."""
    stack = _current_signal_stack()
    return stack.ss_sp or 0, stack.ss_flags, stack.ss_size


@contextmanager
def signal_stack_kept() -> Iterator[None]:
    """The calling thread's alternate signal stack put back as it was before the block (Linux).

    NNCF creates and frees OpenVINO Cores of its own, each of which swaps the thread's alternate
    signal stack (see :func:`shared_core`); freed out of order they left the thread on a freed
    stack, and the process later died with SIGSEGV on the next signal handled there (seen: a
    SIGCHLD while torch.compile ran after NNCF's accuracy control). The shared Core's CPU plugin
    is loaded first, so the stack it installs is the one kept."""
    if not sys.platform.startswith("linux"):
        yield
        return
    shared_core().get_property("CPU", "FULL_DEVICE_NAME")  # loads the CPU plugin, which installs its stack
    saved = _current_signal_stack()
    try:
        yield
    finally:
        gc.collect()  # NNCF's Cores are freed now, so none swaps the stack after it is put back
        ctypes.CDLL(None).sigaltstack(ctypes.byref(saved), None)


def _advanced_parameters(method: str, overflow_fix: str | None, smooth_quant_alpha: float | None) -> Any:
    from nncf.quantization.advanced_parameters import (AdvancedQuantizationParameters, AdvancedSmoothQuantParameters,
                                                       OverflowFix)
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    estimators = {"histogram": RangeEstimatorParametersSet.HISTOGRAM,
                  "percentile": RangeEstimatorParametersSet.MEAN_QUANTILE,
                  "minmax": RangeEstimatorParametersSet.MINMAX}
    extra: dict[str, Any] = {}
    if overflow_fix is not None:
        extra["overflow_fix"] = OverflowFix(overflow_fix)
    if smooth_quant_alpha is not None:
        extra["smooth_quant_alphas"] = AdvancedSmoothQuantParameters(convolution=smooth_quant_alpha, matmul=-1)
    return AdvancedQuantizationParameters(activations_range_estimator_params=estimators[method], **extra)


def _first_and_last_layers(model: ov.Model) -> Any:
    """NNCF ignored scope of the first convolution and the last MatMul (the classifier)."""
    import nncf

    ops = model.get_ordered_ops()
    first = next(op for op in ops if op.get_type_name() == "Convolution")
    last = next(op for op in reversed(ops) if op.get_type_name() == "MatMul")
    return nncf.IgnoredScope(names=[first.get_friendly_name(), last.get_friendly_name()])


def _top1_fraction(compiled: Any, data: Any) -> tuple[float, list[float]]:
    """NNCF validation function: top-1 fraction over (images, labels) items, and per item."""
    per_item = []
    for images, labels in data:
        logits = compiled(images)[0]
        per_item.append(float((logits.argmax(1) == labels).mean()))
    return sum(per_item) / max(len(per_item), 1), per_item


class OpenVinoRunner:
    """An OpenVINO CPU model compiled once per batch size (static shapes run fastest).

    Safe to call from several threads at once (e.g. a threaded web server): the compiled models
    are shared, and each thread gets infer requests of its own (one request runs one call at a time)."""

    backend = "openvino"

    def __init__(self, model: ov.Model, precision: str | None = None, threads: int | None = None) -> None:
        self.core = shared_core()
        self.model = model
        self.threads = threads
        self.config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": HINTS[precision]} if precision else {}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = threads
        if threads and threads < usable_cores():
            # OpenVINO pins a model's threads to the first cores, so every model held to fewer threads than the
            # cores, in any process, runs on the same ones: two 1-thread resnet50 processes (Ray actors, serve
            # replicas) did 13 images/s each pinned against 25.5 unpinned on a 2-core Zen 4; alone, unpinned is as
            # fast (38.7 ms both, interleaved)
            self.config["ENABLE_CPU_PINNING"] = False
        self._compiled: dict[int, Any] = {}
        self._compile_lock = threading.Lock()
        self._per_thread = threading.local()
        self.precision = self._actual_precision(self.compiled(1))

    def compiled(self, batch_size: int) -> Any:
        """The model compiled for ``batch_size`` (compiled on first use)."""
        with self._compile_lock:
            if batch_size not in self._compiled:
                model = self.model.clone()
                model.reshape([batch_size, *self.model.inputs[0].partial_shape[1:].to_shape()])
                self._compiled[batch_size] = self.core.compile_model(model, "CPU", self.config)
            return self._compiled[batch_size]

    def _request(self, batch_size: int) -> Any:
        requests = self._per_thread.__dict__.setdefault("requests", {})
        if batch_size not in requests:
            requests[batch_size] = self.compiled(batch_size).create_infer_request()
        return requests[batch_size]

    def _actual_precision(self, compiled: Any) -> str:
        floating = FROM_HINT.get(compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(), "fp32")
        return "int8" if int8_layers(compiled) else floating

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        request = self._request(len(batch))
        # share_inputs: OpenVINO reads the array in place (a synchronous call, so it outlives the
        # inference) instead of copying it: 4 % off cifar_resnet20's 0.17 ms, nothing on resnet50
        request.infer([batch.detach().to(torch.float32).contiguous().numpy()], share_inputs=True)
        return torch.from_numpy(request.get_output_tensor(0).data.copy()).float()


def int8_layers(compiled: Any) -> dict[str, int]:
    """Layers of the compiled (runtime) graph that execute in int8: layer type -> count."""
    counts: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer = info["layerType"].astype(str)
        if info["runtimePrecision"].astype(str).lower() in INT8_TYPES and layer not in ("Input", "Reorder", "Const"):
            counts[layer] = counts.get(layer, 0) + 1
    return counts


def runner_int8_layers(runner: Runner) -> dict[str, int]:
    return int8_layers(runner.compiled(1)) if isinstance(runner, OpenVinoRunner) else {}


def features_runner(runner: Runner) -> OpenVinoRunner | None:
    """A model from the same parameters to the input of the head's MatMul, with the runner's precision hint and
    threads, or None. resnetkit's exports end ``... -> pooled features -> MatMul (+ Add) -> logits``; int8 models
    put FakeQuantize nodes in between, so the walk back from the output steps over a few nodes."""
    ov = import_openvino()

    if not isinstance(runner, OpenVinoRunner):
        return None
    node = runner.model.outputs[0].get_node()
    for _ in range(HEAD_STEPS):
        if node.get_type_name() == "MatMul":
            features = ov.Model([node.input_value(0)], runner.model.get_parameters(), "features")
            hint = runner.config.get("INFERENCE_PRECISION_HINT")
            return OpenVinoRunner(features, next((k for k, v in HINTS.items() if v == hint), None), runner.threads)
        upstream = [v for v in node.input_values() if v.get_node().get_type_name() != "Constant"]
        if not upstream:
            return None
        node = upstream[0].get_node()
    return None


def _float_hint(options: RunnerOptions, meta: ModelMeta) -> str | None:
    """The float precision asked for, else the one the artifact was made for, else None
    (OpenVINO's own choice; for int8 models that is the precision of the non-int8 layers)."""
    for precision in (options.precision, meta.precision):
        if precision in HINTS:
            return precision
    return None


def _factory(module: nn.Module, meta: ModelMeta, options: RunnerOptions) -> OpenVinoRunner:
    model = converted(module, meta)
    if options.precision == "int8":
        model = quantize_static(model, calibration_batches(meta, options))
    return OpenVinoRunner(model, options.precision if options.precision in HINTS else None, options.threads)


def _read(path: Path, options: RunnerOptions) -> tuple[OpenVinoRunner, ModelMeta]:
    model = shared_core().read_model(str(path))
    meta = read_meta(model, path)
    return OpenVinoRunner(model, _float_hint(options, meta), options.threads), meta


def _read_onnx(path: Path, options: RunnerOptions) -> tuple[OpenVinoRunner, ModelMeta]:
    """An ONNX graph compiled by OpenVINO; the metadata is read with onnx, where the exporter put it."""
    import onnx

    from .onnxruntime import read_meta as read_onnx_meta

    meta = read_onnx_meta(onnx.load(str(path), load_external_data=False), path)
    return OpenVinoRunner(shared_core().read_model(str(path)), _float_hint(options, meta), options.threads), meta


def default_precision(device: Device = CPU) -> str:
    """The float precision OpenVINO picks on this CPU when not told (bf16 where the CPU has it)."""
    return FROM_HINT.get(shared_core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name(), "fp32")


def _write(module: nn.Module, meta: ModelMeta, path: Path, _: ExportSettings) -> None:
    save_openvino(to_openvino(module, meta), path)


def _write_float(module: nn.Module, meta: ModelMeta, path: Path, _: QuantizeData) -> None:
    """Weights stored in fp16 (half the size); OpenVINO is told to compute in the precision the file's metadata
    names (``meta.precision``: fp16 or bf16) when it reads the file."""
    save_openvino(to_openvino(module, meta), path, compress_to_fp16=True)


def _write_static_int8(module: nn.Module, meta: ModelMeta, path: Path, data: QuantizeData) -> None:
    save_openvino(quantize_static(converted(module, meta), data.calibration, data.calibration_method,
                                  validation=data.validation, max_drop=data.max_drop), path)


# The default of fp16, bf16 and static int8: OpenVINO/NNCF int8 was faster than ONNX Runtime QDQ in every
# interleaved resnet50 round, and within 0.5 points of fp32 on both CIFAR ResNets (docs/optimize.md).
register(Backend("openvino", "OpenVINO CPU; int8 = NNCF", ("fp32", "bf16", "fp16", "int8"),
                 _factory, only_reads_module=True, default_precision=default_precision,
                 formats=(FileFormat((".xml",), "an OpenVINO model", _read, export=FileWriter("openvino", _write),
                                     companions=(".bin",)),
                          FileFormat((".onnx",), "an ONNX graph", _read_onnx, own_runtime=False)),
                 quantizers=(Quantizer("fp16", ".xml", _write_float, default=True),
                             Quantizer("bf16", ".xml", _write_float, default=True),
                             Quantizer("static-int8", ".xml", _write_static_int8, default=True, calibration="histogram",
                                       accuracy_control=True)),
                 int8_kernels=runner_int8_layers, features=features_runner,
                 package="openvino", imports=("openvino",), install_hint=install_hint("backends")))
