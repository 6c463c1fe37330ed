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
class ModelSpec:
    """An architecture in the zoo with its builder and its published checkpoints."""

    name: str
    family: str
    builder: Callable[..., nn.Module]
    weights: tuple[WeightsSpec, ...]
    head: str  # dotted path of the final nn.Linear
    last_stage: str  # dotted path of the last feature stage (fine-tuning "last-stage")
    description: str = ""

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

    def meta(self, weights: WeightsSpec | None = None) -> "ModelMeta":
        weights = weights or self.default_weights
        return ModelMeta(
            name=self.name,
            arch=self.name,
            categories=weights.categories,
            preprocessing=weights.preprocessing,
            metrics=weights.metrics,
            weights=weights.tag,
        )


@dataclass(frozen=True)
class ModelMeta:
    """Everything a command needs to know about a loaded model besides its parameters."""

    name: str
    arch: str
    categories: tuple[str, ...]
    preprocessing: Preprocessing
    metrics: PublishedMetrics = field(default_factory=PublishedMetrics)
    weights: str = ""  # which weights: a zoo tag, a file path, or "random"
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. training or quantization config

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
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelMeta":
        return cls(
            name=str(data["name"]),
            arch=str(data["arch"]),
            categories=tuple(str(c) for c in data["categories"]),
            preprocessing=Preprocessing.from_dict(data["preprocessing"]),
            metrics=PublishedMetrics.from_dict(data.get("metrics") or {}),
            weights=str(data.get("weights", "")),
            extra=dict(data.get("extra") or {}),
        )

    def replace(self, **changes: Any) -> "ModelMeta":
        return dataclasses.replace(self, **changes)

    def derived(self, **extra: Any) -> "ModelMeta":
        """Metadata of a model made from this one (quantized, pruned) with ``extra`` entries added.

        The authors' published figures do not describe the new weights, so they move from
        ``metrics`` to ``extra["source_metrics"]`` (kept for provenance, never reported as its accuracy).
        """
        source = self.extra.get("source_metrics") or (self.metrics.to_dict() if self.metrics.top1 is not None else None)
        provenance = {"source_metrics": source} if source else {}
        return self.replace(metrics=PublishedMetrics(), extra={**self.extra, **extra, **provenance})
