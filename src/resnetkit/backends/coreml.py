"""Core ML: ``.mlpackage`` classifiers for Apple devices, written by coremltools.

The package takes an RGB image of the model's input size (pixels 0-255) and does the normalization itself
(the preprocessing's mean and std, per channel, are in the graph); it returns the class label and the
probabilities of every class (softmax in the graph), so an app passes a ``CVPixelBuffer`` and reads a label. The
resize and center crop before it are the app's (Vision's ``VNImageCropAndScaleOption.centerCrop``); they are in the
metadata. Weights and arithmetic are fp16 by default, as Core ML runs them on the GPU and Neural Engine.

Core ML runs only on macOS and iOS: here the package is written and checked without predictions (its inputs,
outputs, labels, normalization constants and metadata are read back from the file); coremltools cannot evaluate
an ML program on Linux.
"""

from __future__ import annotations

import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.errors import BackendUnavailableError, ResnetkitError
from ..core.extras import install_hint
from ..core.spec import ModelMeta
from .base import Backend, ExportSettings, FileFormat, FileWriter, RunnerOptions, register
from .common import META_KEY, meta_from_json, meta_to_json, progress_to_stderr

INPUT_NAME = "image"
MACOS_ONLY = "Core ML predictions need macOS or iOS; this machine runs {system}"
PRECISIONS = {"fp16": "FLOAT16", "fp32": "FLOAT32"}


class Normalized(nn.Module):
    """The classifier with its input normalization before it and a softmax after it: RGB pixels 0-255 in,
    class probabilities out."""

    def __init__(self, module: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.module = module
        self.register_buffer("mean", 255 * torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("scale", 1 / (255 * torch.tensor(std).view(1, -1, 1, 1)))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.module((pixels - self.mean) * self.scale), dim=1)


def why_not_here() -> str | None:
    """Why Core ML cannot run here (None on macOS)."""
    system = platform.system()
    return None if system == "Darwin" else MACOS_ONLY.format(system=system)


def to_coreml(module: nn.Module, meta: ModelMeta, settings: ExportSettings) -> Any:
    """``module`` as a Core ML image classifier (an ML program) in ``settings.precision``, with ``meta``."""
    import coremltools as ct

    pre = meta.preprocessing
    wrapped = Normalized(module.eval(), pre.mean, pre.std).eval()
    example = torch.zeros(settings.batch_size, *pre.input_shape)
    program = torch.export.export(wrapped, (example,)).run_decompositions({})
    with progress_to_stderr():
        model = ct.convert(program, inputs=[ct.ImageType(name=INPUT_NAME, shape=example.shape,
                                                          color_layout=ct.colorlayout.RGB)],
                           classifier_config=ct.ClassifierConfig(list(meta.categories)),
                           compute_precision=getattr(ct.precision, PRECISIONS[settings.precision]),
                           minimum_deployment_target=ct.target.iOS16)
    model.short_description = f"{meta.name}: {len(meta.categories)}-class image classifier (resnetkit)"
    model.input_description[INPUT_NAME] = (f"RGB image, {pre.crop_size}x{pre.crop_size}: resize to {pre.resize_size} "
                                           f"({pre.interpolation}), center-crop {pre.crop_size}")
    model.user_defined_metadata[META_KEY] = meta_to_json(meta)
    return model


def _write(module: nn.Module, meta: ModelMeta, path: Path, settings: ExportSettings) -> None:
    model = to_coreml(module, meta, settings)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:  # a whole package or none
        staged = Path(tmp) / path.name
        model.save(str(staged))
        failed = [check for check in inspect(staged)["checks"].split(", ") if check.endswith("NO")]
        if failed:
            raise ResnetkitError(f"The Core ML package does not read back as written ({', '.join(failed)}).")
        if path.exists():
            shutil.rmtree(path)
        staged.rename(path)


def _spec(path: Path) -> Any:
    import coremltools as ct

    return ct.models.MLModel(str(path), skip_model_load=True).get_spec()


def _operations(spec: Any) -> list[Any]:
    function = spec.mlProgram.functions["main"]
    return list(function.block_specializations[function.opset].operations)


def _argument(operation: Any, name: str, consts: dict[str, Any]) -> np.ndarray | list[str]:
    """The constant value of input ``name`` of ``operation``: inline, or the output of a ``const`` operation."""
    argument = operation.inputs[name].arguments[0]
    return _value(argument.value if argument.HasField("value") else consts[argument.name].attributes["val"])


def _value(value: Any) -> np.ndarray | list[str]:
    """A constant (float tensors and string lists: what the checks read)."""
    value = value.immediateValue
    if value.HasField("list"):
        return [v.immediateValue.tensor.strings.values[0] for v in value.list.values]
    tensor = value.tensor
    if tensor.HasField("floats"):
        return np.array(tensor.floats.values, dtype=np.float32)
    return np.frombuffer(tensor.bytes.values, dtype=np.float16).astype(np.float32)


def inspect(path: Path) -> dict[str, Any]:
    """What a Core ML package says about itself, read back from the file: input, outputs, labels, the
    normalization constants in the graph, precision and resnetkit's metadata, each checked against the metadata."""
    spec = _spec(path)
    meta = meta_from_json(dict(spec.description.metadata.userDefined)[META_KEY], path)
    ops = _operations(spec)
    consts = {op.outputs[0].name: op for op in ops if op.type == "const"}
    classify = next(op for op in ops if op.type == "classify")
    labels = list(_argument(classify, "classes", consts))
    sub, mul = (next(op for op in ops if op.type == kind) for kind in ("sub", "mul"))
    mean = np.asarray(_argument(sub, "y", consts)).reshape(-1) / 255
    std = 1 / (255 * np.asarray(_argument(mul, "y", consts)).reshape(-1))
    image = spec.description.input[0]
    fp16 = any(op.type == "cast" and "fp16" in str(op.attributes.get("dtype", "")) for op in ops) or any(
        "FLOAT16" in str(op.outputs[0].type) for op in ops if op.type == "conv")
    checks = {
        "labels match": list(labels) == list(meta.categories),
        "normalization matches": bool(np.allclose(mean, meta.preprocessing.mean, atol=1e-3)
                                      and np.allclose(std, meta.preprocessing.std, atol=1e-3)),
        "input size matches": (image.type.imageType.width, image.type.imageType.height) == (meta.preprocessing.crop_size,) * 2,
    }
    return {
        "input": f"{image.name}: RGB image {image.type.imageType.width}x{image.type.imageType.height}, pixels 0-255",
        "outputs": ", ".join(o.name for o in spec.description.output),
        "labels": f"{len(labels)} ({', '.join(labels[:3])}{', ...' if len(labels) > 3 else ''})",
        "normalization in the graph": f"mean {_rounded(mean)}, std {_rounded(std)}",
        "compute precision": "fp16" if fp16 else "fp32",
        "checks": ", ".join(f"{name}: {'yes' if ok else 'NO'}" for name, ok in checks.items()),
    }


def _rounded(values: np.ndarray) -> list[float]:
    return [round(float(v), 3) for v in values]


def _read(path: Path, options: RunnerOptions) -> Any:
    why = why_not_here()
    if why is not None:
        raise BackendUnavailableError(f"{path.name} is a Core ML package. {why}; run it on a Mac or an iPhone "
                                      "(or export --format litert / executorch / onnx to run it here).")
    raise BackendUnavailableError("Running Core ML packages through resnetkit is not implemented yet; use Xcode "
                                  "or coremltools' MLModel.predict on macOS.")


register(Backend("coreml", "Core ML (macOS/iOS only): writes .mlpackage image classifiers here, cannot run them",
                 ("fp16", "fp32"), default_precision=lambda device: "fp16",
                 formats=(FileFormat((".mlpackage",), "a Core ML package", _read,
                                     export=FileWriter("coreml", _write, ("batch_size", "precision"),
                                                       "coremltools read-back (labels, normalization, input size)",
                                                       precisions=("fp16", "fp32"), runs_here=why_not_here,
                                                       inspect=inspect)),),
                 package="coremltools", imports=("coremltools",), install_hint=install_hint("edge"), tried_by_auto=False))
