"""Typed descriptions of models, their weights and their preprocessing.

Modelled on torchvision's weights API (one record per checkpoint, the eval transform
belongs to the weights) and timm's ``PretrainedCfg`` (typed fields, not loose dicts).
:class:`ModelMeta` is what every loaded model carries, whether it came from the zoo or
from an artifact written by resnetkit, so every command treats them the same way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torchvision.transforms import InterpolationMode, v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _Contiguous(nn.Module):
    """PILToTensor yields an HWC-strided view; convolutions on it take a slower path."""

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.contiguous()


@dataclass(frozen=True)
class Preprocessing:
    """Eval-time preprocessing: resize the shorter side, center-crop, scale, normalize."""

    crop_size: int
    resize_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def transform(self) -> Callable[[Any], torch.Tensor]:
        """PIL RGB image -> normalized float32 CHW tensor of ``crop_size`` squared."""
        # Resize and crop on the PIL image, as torchvision's ImageClassification preset
        # does, so results match torchvision's published accuracy numbers.
        return v2.Compose(
            [
                v2.Resize(self.resize_size, interpolation=InterpolationMode(self.interpolation), antialias=True),
                v2.CenterCrop(self.crop_size),
                v2.PILToTensor(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(list(self.mean), list(self.std)),
                _Contiguous(),
            ]
        )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.crop_size, self.crop_size)

    def describe(self) -> str:
        return (
            f"resize {self.resize_size} ({self.interpolation}), center-crop {self.crop_size}, "
            f"mean {list(self.mean)}, std {list(self.std)}"
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocessing":
        return cls(
            crop_size=int(data["crop_size"]),
            resize_size=int(data["resize_size"]),
            mean=tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
            interpolation=str(data.get("interpolation", "bilinear")),
        )


@dataclass(frozen=True)
class PublishedMetrics:
    """Figures published by the weights' authors; never measured by resnetkit."""

    top1: float | None = None
    top5: float | None = None
    gmacs: float | None = None
    dataset: str = ""
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PublishedMetrics":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class WeightsSpec:
    """One published checkpoint: where to get it, how to check it, how to use it."""

    tag: str
    url: str
    categories: tuple[str, ...]
    preprocessing: Preprocessing
    metrics: PublishedMetrics
    sha256: str | None = None
    license: str = ""
    # Name of the top-level key holding the state dict, if the file wraps it
    # (akamaster's CIFAR files: {'state_dict': {'module.*': ...}, 'best_prec1': ...}).
    state_dict_key: str | None = None
    strip_prefix: str = ""

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def hash_prefix(self) -> str:
        """The hex digits after the last '-' in the file name (torch.hub convention)."""
        stem = self.file_name.rsplit(".", 1)[0]
        return stem.rsplit("-", 1)[-1] if "-" in stem else ""

    @property
    def expected_hash(self) -> str:
        return self.sha256 or self.hash_prefix


@dataclass(frozen=True)
class PruningTraits:
    """How channel pruning treats a model family."""

    unsupported: str = ""  # why channel pruning cannot follow this family's graph ("" = it can)
    round_to: int = 8  # default channel-count multiple (SIMD-friendly widths)
    # layers besides the classifier head that must keep their output channels
    keep: Callable[[nn.Module], list[nn.Module]] = lambda module: []

    @property
    def prunable(self) -> bool:
        return not self.unsupported


@dataclass(frozen=True)
class ModelSpec:
    """An architecture in the zoo with its builder, its published checkpoints and its family traits."""

    name: str
    family: str
    builder: Callable[..., nn.Module]
    weights: tuple[WeightsSpec, ...]
    head: str  # dotted path of the final nn.Linear
    last_stage: str  # dotted path of the last feature stage (fine-tuning "last-stage")
    description: str = ""
    pruning: PruningTraits = PruningTraits()

    @property
    def default_weights(self) -> WeightsSpec:
        return self.weights[0]

    def get_weights(self, tag: str | None = None) -> WeightsSpec:
        """The checkpoint named ``tag`` (case-insensitive), or the default one."""
        if tag is None or tag.upper() == "DEFAULT":
            return self.default_weights
        for weights in self.weights:
            if weights.tag.upper() == tag.upper():
                return weights
        from .errors import UnknownModelError

        tags = ", ".join(w.tag for w in self.weights)
        raise UnknownModelError(f"{self.name} has no weights '{tag}'. Available: {tags}.")

    def build(self, num_classes: int | None = None) -> nn.Module:
        """A randomly initialised module; ``None`` keeps the default number of classes."""
        classes = len(self.default_weights.categories) if num_classes is None else num_classes
        return self.builder(num_classes=classes)

    def meta(self, weights: WeightsSpec | None = None, *, random: bool = False) -> "ModelMeta":
        """Metadata of this architecture with ``weights``; ``random`` weights carry no accuracy figure."""
        weights = weights or self.default_weights
        return ModelMeta(
            name=self.name,
            arch=self.name,
            categories=weights.categories,
            preprocessing=weights.preprocessing,
            metrics=PublishedMetrics() if random else weights.metrics,
            weights=RANDOM_WEIGHTS if random else weights.tag,
        )


RANDOM_WEIGHTS = "random"


@dataclass(frozen=True)
class Step:
    """One thing done to a model, e.g. ``quantize`` ``static-int8`` with its settings."""

    operation: str  # export | quantize | prune
    method: str  # e.g. onnx, static-int8, channel
    settings: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        shown = ", ".join(f"{k} {v}" for k, v in self.settings.items() if v not in (None, "", 0))
        return f"{self.operation} {self.method}" + (f" ({shown})" if shown else "")


@dataclass(frozen=True)
class Provenance:
    """Where a derived model comes from: the base model, its weights, what was done, its published figures."""

    source: str  # the base model's name (a zoo architecture or an artifact)
    weights: str
    recipe: tuple[Step, ...] = ()
    source_metrics: PublishedMetrics | None = None  # the base weights' published figures, not this model's

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Provenance":
        metrics = data.get("source_metrics")
        return cls(source=str(data["source"]), weights=str(data.get("weights", "")),
                   recipe=tuple(Step(**step) for step in data.get("recipe", ())),
                   source_metrics=PublishedMetrics.from_dict(metrics) if metrics else None)


@dataclass(frozen=True)
class ModelMeta:
    """Everything a command needs to know about a loaded model besides its parameters.

    ``name`` names this model (a zoo name, or an artifact's own name); ``arch`` is the zoo
    architecture it is built from; ``provenance`` says what it was made from, if anything.
    """

    name: str
    arch: str
    categories: tuple[str, ...]
    preprocessing: Preprocessing
    metrics: PublishedMetrics = field(default_factory=PublishedMetrics)
    weights: str = ""  # which weights: a zoo tag, a file path, or "random"
    precision: str = "fp32"  # what the stored weights / graph compute in
    format: str = "pytorch"  # pytorch | onnx | openvino | torchscript
    provenance: Provenance | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # free-form records, e.g. the training config

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "arch": self.arch,
            "categories": list(self.categories),
            "preprocessing": self.preprocessing.to_dict(),
            "metrics": self.metrics.to_dict(),
            "weights": self.weights,
            "precision": self.precision,
            "format": self.format,
            "provenance": self.provenance.to_dict() if self.provenance else None,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelMeta":
        """Read :meth:`to_dict` output, and metadata of the previous version (``extra`` keys)."""
        extra = dict(data.get("extra") or {})
        legacy = {key: extra.pop(key) for key in _LEGACY_KEYS if key in extra}
        provenance = data.get("provenance")
        return cls(
            name=str(data["name"]),
            arch=str(data["arch"]),
            categories=tuple(str(c) for c in data["categories"]),
            preprocessing=Preprocessing.from_dict(data["preprocessing"]),
            metrics=PublishedMetrics.from_dict(data.get("metrics") or {}),
            weights=str(data.get("weights", "")),
            precision=str(data.get("precision") or legacy.get("precision") or "fp32"),
            format=str(data.get("format") or legacy.get("format") or "pytorch"),
            provenance=Provenance.from_dict(provenance) if provenance else _legacy_provenance(data, legacy),
            extra=extra,
        )

    def replace(self, **changes: Any) -> "ModelMeta":
        return dataclasses.replace(self, **changes)

    def derived(self, name: str, step: Step, *, same_weights: bool = False, **changes: Any) -> "ModelMeta":
        """Metadata of a model made from this one by ``step`` (exported, quantized, pruned), called ``name``.

        Unless the weights stay the same (an fp32 export), the authors' published figures do not
        describe the new model, so they move from ``metrics`` to ``provenance.source_metrics``
        (kept for provenance, never reported as its accuracy).
        """
        if self.provenance is None:
            source_metrics = self.metrics if self.metrics.top1 is not None else None
            provenance = Provenance(self.name, self.weights, (step,), source_metrics)
        else:
            provenance = dataclasses.replace(self.provenance, recipe=(*self.provenance.recipe, step))
        metrics = self.metrics if same_weights else PublishedMetrics()
        return self.replace(name=name, metrics=metrics, provenance=provenance, **changes)


# ``extra`` keys of metadata written before precision, format and provenance were typed fields
_LEGACY_KEYS = ("precision", "format", "source_metrics", "quantization", "pruning")


def _legacy_provenance(data: dict[str, Any], legacy: dict[str, Any]) -> Provenance | None:
    recipe = tuple(Step(operation, settings.get("method", ""), {k: v for k, v in settings.items() if k != "method"})
                   for operation, key in (("quantize", "quantization"), ("prune", "pruning"))
                   if (settings := legacy.get(key)))
    if not recipe and "source_metrics" not in legacy:
        return None
    metrics = legacy.get("source_metrics")
    return Provenance(str(data["arch"]), str(data.get("weights", "")), recipe,
                      PublishedMetrics.from_dict(metrics) if metrics else None)
