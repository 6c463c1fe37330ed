"""LiteRT (formerly TensorFlow Lite): ``.tflite`` files for Android and microcontroller-class runtimes, written by
Google's PyTorch converter (litert-torch) and run back here by the LiteRT interpreter (ai-edge-litert, XNNPACK).

fp32; fp16 weights (computed in fp32 by XNNPACK on x86, in fp16 where an ARM CPU or a GPU delegate has it); int8 as
full-integer models (int8 weights, activations, input and output), quantized by PT2E with litert-torch's own
quantizer and calibrated on the user's images. resnetkit's metadata travels in the flatbuffer's ``metadata`` list
(entry ``resnetkit``), which LiteRT keeps and ignores.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from ..core.errors import UnknownModelError
from ..core.extras import install_hint
from ..core.fileio import atomic_write
from ..core.spec import ModelMeta
from .base import Backend, ExportSettings, FileFormat, FileWriter, RunnerOptions, register
from .common import META_KEY, in_fixed_batches, meta_from_json, meta_to_json, progress_to_stderr, pt2e_int8

FILE_IDENTIFIER = b"TFL3"


@contextlib.contextmanager
def _quiet_converter() -> Iterator[None]:
    """litert-torch prints a progress tree unless told otherwise (by an environment variable, restored after),
    and its quantizer prints sizes to stdout (stdout may be JSON)."""
    previous = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    try:
        with progress_to_stderr():
            yield
    finally:
        if previous is None:
            os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = previous


def to_litert(module: nn.Module, meta: ModelMeta, settings: ExportSettings) -> bytes:
    """``module`` as a LiteRT flatbuffer for a fixed batch of ``settings.batch_size``, in ``settings.precision``."""
    import litert_torch

    example = torch.zeros(settings.batch_size, *meta.preprocessing.input_shape)
    config = None
    with _quiet_converter():
        if settings.precision == "int8":
            from litert_torch.quantize import pt2e_quantizer
            from litert_torch.quantize.quant_config import QuantConfig

            quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
                pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
            module = pt2e_int8(module, example, quantizer, settings.calibration, fold_quantize=False)
            module.training = False  # already in eval mode (set by PT2E); the flag only silences the converter
            config = QuantConfig(pt2e_quantizer=quantizer)
        elif settings.precision == "fp16":
            from litert_torch.generative.quantize import quant_recipes

            config = quant_recipes.full_fp16_recipe()
        return litert_torch.convert(module, (example,), quant_config=config).model_content()


def with_meta(flatbuffer: bytes, meta: ModelMeta) -> bytes:
    """The model with resnetkit's metadata as a ``metadata`` entry (a buffer of JSON) added."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(flatbuffer, 0)
    for stored in model.buffers:
        # Weights the quantizer wrote after the flatbuffer (offset > 1, per the schema) move inside it: re-packing
        # writes only the flatbuffer. Models here are far below flatbuffers' 2 GB limit.
        if stored.offset and stored.offset > 1:
            stored.data = np.frombuffer(flatbuffer, np.uint8, count=stored.size, offset=stored.offset)
            stored.offset = stored.size = 0
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(meta_to_json(meta).encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = META_KEY, len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    builder = flatbuffers.Builder(len(flatbuffer) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def read_meta(flatbuffer: bytes, path: Path) -> ModelMeta:
    from ai_edge_litert import schema_py_generated as schema

    if flatbuffer[4:8] != FILE_IDENTIFIER:
        raise UnknownModelError(f"{path} is not a LiteRT (TFLite) model: its file identifier is not {FILE_IDENTIFIER!r}.")
    model = schema.Model.GetRootAs(flatbuffer, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == META_KEY.encode():
            return meta_from_json(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes().decode(), path)
    raise UnknownModelError(f"{path} is a LiteRT model without resnetkit metadata (class names, preprocessing); "
                            "export it with 'resnetkit export --format litert'.")


class LiteRtRunner:
    """The LiteRT interpreter (XNNPACK on the CPU) on one .tflite model. The graph is compiled for one batch size;
    other batch sizes are run in slices of it. int8 models take and give int8 tensors: inputs are quantized and
    logits dequantized here with the scales stored in the file. One call at a time (the interpreter is not
    thread-safe)."""

    backend = "litert"

    def __init__(self, flatbuffer: bytes, precision: str, threads: int | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.precision, self.threads = precision, threads
        self.interpreter = Interpreter(model_content=flatbuffer, num_threads=threads)
        self.interpreter.allocate_tensors()
        self.input, self.output = self.interpreter.get_input_details()[0], self.interpreter.get_output_details()[0]
        self.batch_size = int(self.input["shape"][0])
        self._lock = threading.Lock()

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with self._lock:
            return in_fixed_batches(self._run, batch.detach().cpu().float(), self.batch_size)

    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        self.interpreter.set_tensor(self.input["index"], _quantized(batch.numpy(), self.input))
        self.interpreter.invoke()
        return torch.from_numpy(_dequantized(self.interpreter.get_tensor(self.output["index"]), self.output))


def _quantized(array: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return array
    scale, zero_point = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(array / scale) + zero_point, info.min, info.max).astype(detail["dtype"])


def _dequantized(array: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return array.copy()
    scale, zero_point = detail["quantization"]
    return ((array.astype(np.float32) - zero_point) * scale).astype(np.float32)


def _read(path: Path, options: RunnerOptions) -> tuple[LiteRtRunner, ModelMeta]:
    flatbuffer = path.read_bytes()
    meta = read_meta(flatbuffer, path)
    return LiteRtRunner(flatbuffer, meta.precision or "fp32", options.threads), meta


def _write(module: nn.Module, meta: ModelMeta, path: Path, settings: ExportSettings) -> None:
    content = with_meta(to_litert(module, meta, settings), meta)
    read_meta(content, path)  # the metadata reads back
    with atomic_write(path) as handle:
        handle.write(content)


register(Backend("litert", "LiteRT (TFLite) interpreter, XNNPACK on the CPU; runs .tflite files", ("fp32", "fp16", "int8"),
                 formats=(FileFormat((".tflite",), "a LiteRT (TFLite) model", _read,
                                     export=FileWriter("litert", _write, ("batch_size", "precision"),
                                                       precisions=("fp32", "fp16", "int8"))),),
                 package="ai-edge-litert", imports=("ai_edge_litert", "litert_torch"), install_hint=install_hint("edge"),
                 tried_by_auto=False))
