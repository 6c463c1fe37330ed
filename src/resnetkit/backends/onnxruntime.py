"""ONNX: export with torch.onnx (dynamo exporter), run with ONNX Runtime, quantize to QDQ int8.

Static int8 follows ONNX Runtime's CPU guidance: QDQ format (QOperator with signed
activations lost all accuracy on x86 in a maintainer-confirmed report), uint8 activations,
per-channel int8 weights, ``reduce_range`` on CPUs without VNNI, percentile calibration.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import io
import itertools
import logging
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import nn

from ..core.errors import BackendUnavailableError, ResnetkitError, UnknownModelError
from ..core.extras import install_hint
from ..core.fileio import atomic_write
from ..core.spec import ModelMeta
from .base import (Backend, ExportSettings, FileFormat, FileWriter, QuantizeData, Quantizer, Runner, RunnerOptions,
                   register)
from .common import (META_KEY, calibration_batches, captured_stdout, content_key, convert_once, converted_on_disk,
                     cpu_has_vnni, meta_from_json, meta_to_json)

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 18
INT8_KERNELS = ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm", "DynamicQuantizeMatMul")
LINEAR_OPS = ("Gemm", "MatMul")
HEAD_STEPS = 6  # nodes between the head and the output: Add, QuantizeLinear, DequantizeLinear, Identity...


def to_onnx(module: nn.Module, meta: ModelMeta, *, dynamic_batch: bool = True, batch_size: int = 1,
            opset: int | None = None) -> onnx.ModelProto:
    """``module`` as an ONNX graph (input ``input`` NCHW float32, output ``logits``) with ``meta`` attached;
    the batch dimension is dynamic or fixed to ``batch_size``."""
    import onnxscript  # noqa: F401  (the dynamo exporter needs it; fail here with its own message)
    example = torch.zeros(2 if dynamic_batch else batch_size, *meta.preprocessing.input_shape)
    shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    program = torch.onnx.export(copy.deepcopy(module).float().eval(), (example,), dynamo=True,
                                opset_version=opset or DEFAULT_OPSET, input_names=[INPUT_NAME],
                                output_names=[OUTPUT_NAME], dynamic_shapes=shapes, verbose=False)
    model = program.model_proto
    _check_opset(model, opset or DEFAULT_OPSET)
    # The exporter's intermediate shape annotations can disagree with ONNX shape inference
    # (seen on Gemm); they are optional, so drop them and let consumers infer shapes.
    del model.graph.value_info[:]
    set_meta(model, meta)
    return model


def traced_onnx(module: nn.Module, meta: ModelMeta) -> onnx.ModelProto:
    """:func:`to_onnx` with a dynamic batch, made by torch's TorchScript-based exporter where it traces the model
    cleanly, else by :func:`to_onnx`. This is the graph the runtimes run (:func:`exported`), not a file users get.

    Why not always the torch.export-based exporter: tracing takes 0.3-0.7 s per model against 2.7-5.9 s
    (resnet18 ... mobilenet_v2, Zen 5), and the two graphs ran at the same latency on ONNX Runtime and OpenVINO
    with the same outputs (docs/optimize.md); on a first run that export was most of each model's set-up.
    torch deprecates that exporter (it warns that it will be removed), so any failure, a trace that depended on
    the data (TracerWarning), or its absence from a later torch falls back to :func:`to_onnx`."""
    import onnx

    stream = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its deprecation, and notes such as "constant folding not applied"
            warnings.simplefilter("error", torch.jit.TracerWarning)
            torch.onnx.export(_fp32_eval(module), (torch.zeros(1, *meta.preprocessing.input_shape),),
                              stream, dynamo=False, opset_version=DEFAULT_OPSET, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    except Exception as exc:  # noqa: BLE001  (whatever stops the tracer, the other exporter is the answer)
        log.debug("tracing %s for ONNX failed (%s); using the torch.export-based exporter", meta.name, exc)
        return to_onnx(module, meta)
    model = onnx.load_from_string(stream.getvalue())
    _check_opset(model, DEFAULT_OPSET)
    set_meta(model, meta)
    return model


def _fp32_eval(module: nn.Module) -> nn.Module:
    """``module`` itself when it is already fp32 and in eval mode (the tracer only reads it; copying resnet152 took
    0.2 s), else an fp32 copy in eval mode."""
    tensors = itertools.chain(module.parameters(), module.buffers())
    if not any(m.training for m in module.modules()) and all(t.dtype == torch.float32 for t in tensors if t.is_floating_point()):
        return module
    return copy.deepcopy(module).float().eval()


def _check_opset(model: onnx.ModelProto, wanted: int) -> None:
    """torch.onnx falls back to its own opset (with only a warning) when it cannot convert."""
    actual = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if actual != wanted:
        raise ResnetkitError(f"torch.onnx could not produce opset {wanted} for this model (it produced {actual}). "
                             f"Use --opset {actual} or higher.")


def set_meta(model: onnx.ModelProto, meta: ModelMeta) -> None:
    import onnx

    onnx.helper.set_model_props(model, {META_KEY: meta_to_json(meta)})


def read_meta(model: onnx.ModelProto, path: Path) -> ModelMeta:
    props = {p.key: p.value for p in model.metadata_props}
    if META_KEY not in props:
        raise UnknownModelError(f"{path} is an ONNX model without resnetkit metadata (class names, preprocessing); "
                                "export it with 'resnetkit export'.")
    return meta_from_json(props[META_KEY], path)


def save_onnx(model: onnx.ModelProto, path: str | Path) -> Path:
    """Check the graph with ``onnx.checker`` and write it as one self-contained file."""
    import onnx

    onnx.checker.check_model(model)
    with atomic_write(path) as handle:
        handle.write(model.SerializeToString())
    return Path(path)


@dataclass(frozen=True)
class SerializedGraph:
    """An ONNX graph as the runtimes read it: a file (the cache's, a user's) or bytes. They read it as it is:
    serializing resnet152's ModelProto took 0.4 s on a 2-core Zen 4, and ONNX Runtime built a session from its file
    in 0.2 s against 0.6 s from the same bytes (OpenVINO's converter: 1.15 against 1.3 s)."""

    data: Path | bytes

    def proto(self) -> onnx.ModelProto:
        """The graph, parsed (a new message each call)."""
        import onnx

        return onnx.load(str(self.data)) if isinstance(self.data, Path) else onnx.load_from_string(self.data)

    def readable(self) -> bool:
        """False once its file is gone (the cache evicted or cleared it)."""
        return not isinstance(self.data, Path) or self.data.is_file()

    def for_session(self) -> str | bytes:
        """What ``onnxruntime.InferenceSession`` takes: the file's path, or the bytes."""
        return str(self.data) if isinstance(self.data, Path) else self.data


@dataclass
class OnnxRuntimeRunner:
    """An ONNX Runtime CPU session on ``graph``; ``precision`` is what the graph computes in (empty: read from it)."""

    graph: onnx.ModelProto | SerializedGraph
    precision: str = ""
    threads: int | None = None  # intra-op threads (None: ONNX Runtime's default, one per physical core)
    backend: str = "onnxruntime"
    session: Any = field(init=False, repr=False)

    @functools.cached_property
    def model(self) -> onnx.ModelProto:
        """The graph as an ONNX message (parsed on first use where it came serialized)."""
        return self.graph.proto() if isinstance(self.graph, SerializedGraph) else self.graph

    def __post_init__(self) -> None:
        import onnxruntime as ort

        self.precision = self.precision or graph_precision(self.model)

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            options.intra_op_num_threads = self.threads
        # Its threads spin while a call runs (fast) but not after it returns: by default they spin on for tens of
        # ms, taking the cores from what runs next in the process (another runtime, serve's image decoding).
        options.add_session_config_entry("session.force_spinning_stop", "1")
        graph = self.graph.for_session() if isinstance(self.graph, SerializedGraph) else self.graph.SerializeToString()
        self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        graph_input = self.session.get_inputs()[0]
        self.input_name = graph_input.name
        batch_dim = graph_input.shape[0]
        self.fixed_batch = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        array = batch.detach().to(torch.float32).contiguous().numpy()
        size = self.fixed_batch
        if size is None or len(array) == size:
            return self._run(array)
        # A graph exported for a fixed batch size runs on slices of that size, the last one zero-padded.
        pad = -len(array) % size
        padded = np.concatenate([array, np.zeros((pad, *array.shape[1:]), array.dtype)]) if pad else array
        logits = torch.cat([self._run(padded[i:i + size]) for i in range(0, len(padded), size)])
        return logits[:len(array)]

    def _run(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0]).float()


class _Images:
    """ONNX Runtime's CalibrationDataReader protocol, one image at a time (its histogram
    collectors cannot merge batches of different sizes), read in ranges of :func:`calibration_chunk`
    images: ONNX Runtime keeps every intermediate output of the images it reads at once, about
    100 MB per image for resnet50, and 300 of them at once were killed for memory on a 24 GB machine."""

    def __init__(self, batches: Sequence[torch.Tensor], input_name: str) -> None:
        self.images = [{input_name: image[None].float().contiguous().numpy()} for b in batches for image in b]
        self.items = iter(self.images)

    def __len__(self) -> int:
        return len(self.images)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.items = iter(self.images[start_index:end_index])

    def get_next(self) -> dict | None:
        return next(self.items, None)


def calibration_chunk(images: int, most: int = 8) -> int:
    """The largest divisor of ``images`` up to ``most``: ONNX Runtime's chunked calibration
    (``CalibStridedMinMax``, which merges the histograms of every chunk too) needs equal chunks."""
    return max(size for size in range(1, min(most, images) + 1) if images % size == 0)


CALIBRATION_METHODS = {"percentile": "Percentile", "histogram": "Entropy", "minmax": "MinMax"}


def quantize_static(model: onnx.ModelProto, batches: Sequence[torch.Tensor], method: str = "percentile") -> onnx.ModelProto:
    """Static int8 QDQ: uint8 activations, per-channel int8 weights, calibrated on ``batches``."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static as ort_quantize
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        source, prepared, target = (Path(tmp) / n for n in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        onnx.save(model, source)
        quant_pre_process(str(source), str(prepared))
        images = _Images(batches, model.graph.input[0].name)
        with captured_stdout():
            ort_quantize(str(prepared), str(target), images,
                         extra_options={"CalibStridedMinMax": calibration_chunk(len(images))},
                         quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                         per_channel=True, reduce_range=not cpu_has_vnni(),
                         calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[method]))
        quantized = onnx.load(str(target))
    _copy_meta(model, quantized)
    return quantized


def quantize_dynamic(model: onnx.ModelProto) -> onnx.ModelProto:
    """Dynamic int8: int8 weights, activations quantized per call; ONNX Runtime does this
    for MatMul/Gemm only, so a conv net gets just its final Linear layer quantized."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic as ort_quantize
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        source, prepared, target = (Path(tmp) / n for n in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        onnx.save(model, source)
        quant_pre_process(str(source), str(prepared))  # ONNX Runtime's recommended first step (and it says so if skipped)
        ort_quantize(str(prepared), str(target), op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8)
        quantized = onnx.load(str(target))
    _copy_meta(model, quantized)
    return quantized


def _copy_meta(source: onnx.ModelProto, target: onnx.ModelProto) -> None:
    import onnx

    props = {p.key: p.value for p in source.metadata_props}
    if META_KEY in props:
        onnx.helper.set_model_props(target, {META_KEY: props[META_KEY]})


def int8_kernels(model: onnx.ModelProto) -> dict[str, int]:
    """Integer kernels left in the graph after ONNX Runtime's own optimizations (op -> count).

    QDQ graphs only prove their worth once ORT fuses them into integer kernels; this reads
    the graph ORT actually runs."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(optimized)
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        ops = [node.op_type for node in onnx.load(str(optimized)).graph.node]
    return {op: ops.count(op) for op in sorted(set(ops)) if op in INT8_KERNELS}


def graph_precision(model: onnx.ModelProto) -> str:
    import onnx

    if any(n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear") for n in model.graph.node):
        return "int8"
    return "fp16" if any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer) else "fp32"


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with fp16 weights and arithmetic, for mobile runtimes; the input and the logits stay float32 (a
    Cast at each end), so callers and the metadata do not change. ONNX Runtime's CPU provider runs the ops it has
    no fp16 kernel for in fp32, with Casts it inserts itself."""
    if importlib.util.find_spec("onnxconverter_common") is None:
        raise BackendUnavailableError(f"fp16 ONNX files are written with onnxconverter-common. {install_hint('edge')}")
    from onnxconverter_common.float16 import convert_float_to_float16

    with warnings.catch_warnings():  # one warning per weight too small for fp16, which is set to fp16's smallest
        warnings.simplefilter("ignore", UserWarning)
        return convert_float_to_float16(model, keep_io_types=True)


def exported(module: nn.Module, meta: ModelMeta) -> SerializedGraph:
    """:func:`traced_onnx`, serialized once, through the on-disk cache of converted models
    (:func:`.common.converted_on_disk`; exporting resnet152 with torch.export took 20 s on a 2-core Zen 2,
    reading it back 1 s): the cached file once written,
    or the same weights' graph read moments ago in this process (shared: it is immutable) while its file is
    there: ``auto`` builds ONNX Runtime and OpenVINO runners (at each thread count) from one export."""
    import onnx

    key = content_key(module, meta, torch.__version__, onnx.__version__)

    def read_or_export() -> SerializedGraph:
        return converted_on_disk("onnx", key, meta, lambda: SerializedGraph(traced_onnx(module, meta).SerializeToString()),
                                 _save, SerializedGraph, (".onnx",), saved=SerializedGraph)

    return convert_once("onnx", key, read_or_export, lambda graph: graph, usable=SerializedGraph.readable)


def _save(graph: SerializedGraph, path: Path) -> None:
    assert isinstance(graph.data, bytes), "a graph read from a file is already saved"
    with atomic_write(path) as handle:
        handle.write(graph.data)


def _factory(module: nn.Module, meta: ModelMeta, options: RunnerOptions) -> OnnxRuntimeRunner:
    graph = exported(module, meta)
    if options.precision == "int8":
        model = quantize_static(graph.proto(), calibration_batches(meta, options))
        return OnnxRuntimeRunner(model, graph_precision(model), options.threads)
    return OnnxRuntimeRunner(graph, "fp32", options.threads)  # traced_onnx exports the module in fp32


def _read(path: Path, options: RunnerOptions) -> tuple[OnnxRuntimeRunner, ModelMeta]:
    graph = SerializedGraph(path)
    model = graph.proto()
    meta = read_meta(model, path)  # before any session: a file without resnetkit's metadata is refused first
    return OnnxRuntimeRunner(graph, graph_precision(model), options.threads), meta


def _write(module: nn.Module, meta: ModelMeta, path: Path, settings: ExportSettings) -> None:
    model = to_onnx(module, meta, dynamic_batch=settings.dynamic_batch, batch_size=settings.batch_size,
                    opset=settings.opset)
    save_onnx(to_fp16(model) if settings.precision == "fp16" else model, path)


def _write_static_int8(module: nn.Module, meta: ModelMeta, path: Path, data: QuantizeData) -> None:
    save_onnx(quantize_static(to_onnx(module, meta), data.calibration, data.calibration_method), path)


def _write_dynamic_int8(module: nn.Module, meta: ModelMeta, path: Path, _: QuantizeData) -> None:
    save_onnx(quantize_dynamic(to_onnx(module, meta)), path)


def _runner_int8_kernels(runner: Runner) -> dict[str, int]:
    return int8_kernels(runner.model) if isinstance(runner, OnnxRuntimeRunner) else {}


def head_input(model: onnx.ModelProto) -> str | None:
    """The name of the tensor feeding the graph's final linear layer, or None if there is none close to the output.

    resnetkit's exports end ``... -> pooled features -> Gemm or MatMul (+ Add) -> logits``; int8 graphs put
    QuantizeLinear/DequantizeLinear nodes in between, so the walk back from the output steps over a few nodes."""
    producers = {out: node for node in model.graph.node for out in node.output}
    initializers = {init.name for init in model.graph.initializer}
    tensor = model.graph.output[0].name
    for _ in range(HEAD_STEPS):
        node = producers.get(tensor)
        if node is None:
            return None
        if node.op_type in LINEAR_OPS:
            return node.input[0]
        upstream = [name for name in node.input if name in producers and name not in initializers]
        if not upstream:
            return None
        tensor = upstream[0]
    return None


def features_runner(runner: Runner) -> OnnxRuntimeRunner | None:
    """The same graph with the head's input as its only output (ONNX Runtime prunes the head), or None."""
    import onnx

    if not isinstance(runner, OnnxRuntimeRunner) or (name := head_input(runner.model)) is None:
        return None
    model = onnx.ModelProto()
    model.CopyFrom(runner.model)
    del model.graph.output[:]
    model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return OnnxRuntimeRunner(model, runner.precision, runner.threads)


register(Backend("onnxruntime", "ONNX Runtime CPU; int8 = static QDQ", ("fp32", "int8"), _factory, only_reads_module=True,
                 formats=(FileFormat((".onnx",), "an ONNX graph", _read,
                                     export=FileWriter("onnx", _write, ("dynamic_batch", "opset", "precision"),
                                                       "onnx.checker", precisions=("fp32", "fp16"))),),
                 quantizers=(Quantizer("dynamic-int8", ".onnx", _write_dynamic_int8, default=True),
                             Quantizer("static-int8", ".onnx", _write_static_int8, calibration="percentile")),
                 int8_kernels=_runner_int8_kernels, features=features_runner, package="onnxruntime",
                 imports=("onnx", "onnxruntime", "onnxscript"),
                 install_hint=install_hint("backends")))
