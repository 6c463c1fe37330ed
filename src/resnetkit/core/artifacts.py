"""resnetkit's own PyTorch artifact: weights plus the metadata every command needs.

An artifact is a ``torch.save``'d dict of plain types and tensors (so it loads with
``weights_only=True``)::

    {"resnetkit": 1, "meta": ModelMeta.to_dict(), "state_dict": {...}}

The architecture is rebuilt from the zoo entry named ``meta["arch"]``; layers whose saved
shapes differ from the zoo's (a channel-pruned model) are resized to fit before loading,
so pruned models reload without pickling code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import UnknownModelError, WeightsError
from .fileio import atomic_write
from .spec import ModelMeta
from .weights import safe_load
from .zoo import get_spec, is_zoo_name

ARTIFACT_VERSION = 1
ARTIFACT_SUFFIXES = (".pt", ".pth")


def save_artifact(path: str | os.PathLike[str], module: nn.Module, meta: ModelMeta,
                  additional: dict[str, Any] | None = None) -> Path:
    """Write ``module``'s weights and ``meta`` atomically to ``path``.

    ``additional`` top-level entries (plain types and tensors, e.g. a training run's resumable
    state) are stored alongside; readers of the artifact ignore them.
    """
    if not is_zoo_name(meta.arch):
        raise UnknownModelError(f"Cannot save an artifact for architecture '{meta.arch}': not in the zoo.")
    payload = {
        "resnetkit": ARTIFACT_VERSION,
        "meta": meta.to_dict(),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()},
        **(additional or {}),
    }
    with atomic_write(path) as handle:
        torch.save(payload, handle)
    return Path(path)


def read_artifact(path: str | os.PathLike[str]) -> tuple[ModelMeta, dict[str, torch.Tensor]]:
    payload = safe_load(path)
    if not isinstance(payload, dict) or "resnetkit" not in payload:
        raise UnknownModelError(
            f"{path} is a PyTorch file but not a resnetkit artifact (no metadata). To use plain weights, "
            f"pass a zoo name with --weights {path}."
        )
    return ModelMeta.from_dict(payload["meta"]), payload["state_dict"]


def build_from_artifact(meta: ModelMeta, state: dict[str, torch.Tensor]) -> nn.Module:
    """The zoo architecture ``meta.arch`` with layers resized to ``state`` and its weights loaded."""
    module = get_spec(meta.arch).build(num_classes=meta.num_classes)
    fit_layers_to_state_dict(module, state)
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise WeightsError(f"Artifact weights do not fit {meta.arch}: {str(exc).splitlines()[0]}") from None
    return module.eval()


def fit_layers_to_state_dict(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Replace Conv2d / BatchNorm2d / Linear layers whose saved weight shape differs."""
    for name, layer in list(module.named_modules()):
        weight = state.get(f"{name}.weight")
        if weight is None or not hasattr(layer, "weight") or layer.weight.shape == weight.shape:
            continue
        replacement = _resized_layer(layer, weight)
        parent_name, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, child, replacement)


def _resized_layer(layer: nn.Module, weight: torch.Tensor) -> nn.Module:
    if isinstance(layer, nn.Conv2d):
        out_ch, in_per_group = weight.shape[:2]
        depthwise = layer.groups == layer.in_channels and layer.groups > 1
        groups = out_ch if depthwise else layer.groups
        return nn.Conv2d(in_per_group * groups, out_ch, layer.kernel_size, layer.stride, layer.padding,
                         layer.dilation, groups, layer.bias is not None)
    if isinstance(layer, nn.BatchNorm2d):
        return nn.BatchNorm2d(weight.shape[0], layer.eps, layer.momentum, layer.affine, layer.track_running_stats)
    if isinstance(layer, nn.Linear):
        return nn.Linear(weight.shape[1], weight.shape[0], layer.bias is not None)
    raise WeightsError(f"Cannot resize layer {type(layer).__name__} to the saved shape {tuple(weight.shape)}.")


def load_artifact(path: str | os.PathLike[str]) -> tuple[nn.Module, ModelMeta]:
    """The module (architecture rebuilt, weights loaded) and metadata of a resnetkit ``.pt`` artifact."""
    meta, state = read_artifact(path)
    return build_from_artifact(meta, state), meta
