"""The model zoo: one :class:`ModelSpec` per architecture, in one registry.

ImageNet entries take everything (URL, categories, transforms, published metrics and
ops) from torchvision's own weights enums; nothing is copied from tables. Adding a model
is one ``register(...)`` call.
"""

from __future__ import annotations

import difflib
import fnmatch
from functools import partial
from typing import Callable

import torchvision
from torch import nn

from .cifar_resnet import BasicBlock, CifarResNet
from .errors import UnknownModelError
from .spec import (IMAGENET_MEAN, IMAGENET_STD, ModelSpec, Preprocessing, PruningTraits, PublishedMetrics,
                   WeightsSpec)

_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` to the zoo; a second model with the same name is a programming error."""
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def list_models(include: str | None = None, exclude: str | None = None) -> list[str]:
    """Zoo names in registration order, optionally filtered by shell-style patterns."""
    names = list(_REGISTRY)
    if include:
        names = [n for n in names if fnmatch.fnmatch(n, include)]
    if exclude:
        names = [n for n in names if not fnmatch.fnmatch(n, exclude)]
    return names


def get_spec(name: str) -> ModelSpec:
    """The zoo entry called ``name``; an unknown name suggests the closest ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownModelError(
            f"Unknown model '{name}'.{hint} Run 'resnetkit models' to list the zoo, "
            "or pass the path of a model file written by resnetkit."
        ) from None


def is_zoo_name(name: str) -> bool:
    return name in _REGISTRY


# --- torchvision ImageNet models -------------------------------------------------------

def _torchvision_weights(enum: type) -> tuple[WeightsSpec, ...]:
    """One WeightsSpec per member of a torchvision weights enum (DEFAULT is an alias)."""
    specs = []
    for member in enum:
        transform = member.transforms()
        metrics = member.meta["_metrics"]["ImageNet-1K"]
        specs.append(
            WeightsSpec(
                tag=member.name,
                url=member.url,
                categories=tuple(member.meta["categories"]),
                preprocessing=Preprocessing(
                    crop_size=transform.crop_size[0],
                    resize_size=transform.resize_size[0],
                    mean=tuple(transform.mean),
                    std=tuple(transform.std),
                    interpolation=transform.interpolation.value,
                ),
                metrics=PublishedMetrics(
                    top1=metrics["acc@1"],
                    top5=metrics["acc@5"],
                    gmacs=member.meta.get("_ops"),
                    dataset="ImageNet-1K val",
                    source=f"torchvision {torchvision.__version__} {enum.__name__}.{member.name}",
                ),
                license="BSD-3-Clause (torchvision)",
            )
        )
    return tuple(specs)


def _register_torchvision(name: str, family: str, weights_enum: type, head: str, last_stage: str,
                          pruning: PruningTraits = PruningTraits()) -> None:
    builder: Callable[..., nn.Module] = getattr(torchvision.models, name)
    register(
        ModelSpec(
            name=name,
            family=family,
            builder=partial(builder, weights=None),
            weights=_torchvision_weights(weights_enum),
            head=head,
            last_stage=last_stage,
            description=f"torchvision.models.{name}",
            pruning=pruning,
        )
    )


_tv = torchvision.models
for _depth, _enum in [(18, _tv.ResNet18_Weights), (34, _tv.ResNet34_Weights), (50, _tv.ResNet50_Weights),
                      (101, _tv.ResNet101_Weights), (152, _tv.ResNet152_Weights)]:
    _register_torchvision(f"resnet{_depth}", "resnet", _enum, head="fc", last_stage="layer4")
_register_torchvision("mobilenet_v2", "mobilenet", _tv.MobileNet_V2_Weights, head="classifier.1", last_stage="features.18")
_register_torchvision("shufflenet_v2_x1_0", "shufflenet", _tv.ShuffleNet_V2_X1_0_Weights, head="fc", last_stage="conv5",
                      pruning=PruningTraits(unsupported="its channel shuffle (reshape-transpose-reshape) interleaves "
                                            "channels of two branches, which the dependency graph cannot map back to "
                                            "prunable layers"))
_register_torchvision("efficientnet_b0", "efficientnet", _tv.EfficientNet_B0_Weights, head="classifier.1", last_stage="features.8")

# --- CIFAR-10 ResNets (He et al. 2016, sec. 4.2), weights by akamaster ---------------------

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_CIFAR_URL = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"
# depth -> (file, full SHA-256 where published, published top-1 on the CIFAR-10 test set)
_CIFAR_CHECKPOINTS = {
    20: ("resnet20-12fca82f.th", "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8", 91.73),
    32: ("resnet32-d509ac18.th", "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850", 92.63),
    44: ("resnet44-014dd654.th", "014dd6541728a1c700b1642ab640e211dc6eb8ed507d70697458dc8f8a0ae2e4", 93.10),
    56: ("resnet56-4bfd9763.th", "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367", 93.39),
    110: ("resnet110-1d1ed7c2.th", None, 93.68),
}


def _cifar_pinned_layers(module: nn.Module) -> list[nn.Module]:
    """Option-A shortcuts (zero-padding, no conv) pin each block's output width: only the first
    conv of each BasicBlock may lose channels."""
    inner = {block.conv1 for block in module.modules() if isinstance(block, BasicBlock)}
    return [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m not in inner]


# CIFAR ResNets start at 16 channels, where multiples of 8 would mean halving a layer
CIFAR_PRUNING = PruningTraits(round_to=4, keep=_cifar_pinned_layers)
CIFAR_PREPROCESSING = Preprocessing(crop_size=32, resize_size=32, mean=IMAGENET_MEAN, std=IMAGENET_STD)

for _depth, (_file, _sha, _top1) in _CIFAR_CHECKPOINTS.items():
    register(
        ModelSpec(
            name=f"cifar_resnet{_depth}",
            family="cifar_resnet",
            builder=partial(CifarResNet, _depth),
            weights=(
                WeightsSpec(
                    tag="CIFAR10_AKAMASTER",
                    url=_CIFAR_URL + _file,
                    sha256=_sha,
                    categories=CIFAR10_CLASSES,
                    preprocessing=CIFAR_PREPROCESSING,
                    metrics=PublishedMetrics(
                        top1=_top1,
                        dataset="CIFAR-10 test (original images)",
                        source="github.com/akamaster/pytorch_resnet_cifar10 README",
                    ),
                    license="BSD-2-Clause (akamaster/pytorch_resnet_cifar10)",
                    state_dict_key="state_dict",
                    strip_prefix="module.",
                ),
            ),
            head="linear",
            last_stage="layer3",
            description=f"CIFAR ResNet-{_depth}, option-A shortcuts (He et al. 2016)",
            pruning=CIFAR_PRUNING,
        )
    )
