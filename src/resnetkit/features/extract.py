"""Embeddings: a classifier's pooled features (the input of its final linear layer) instead of its logits.

The feature module is the zoo architecture with its head replaced by ``nn.Identity`` (the
spec's ``head`` path), or, for ``layer``, torchvision's ``create_feature_extractor`` cut at
that stage and global-average-pooled. It runs on any backend that runs a PyTorch module.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from ..backends.base import RunInfo, Runner, RunnerOptions, make_runner
from ..core.device import Device, resolve_device
from ..core.errors import ModuleRequiredError, ResnetkitError
from ..core.images import ImagePaths, iter_image_paths
from ..core.progress import track
from ..core.zoo import get_spec, is_zoo_name
from ..run.classify import prepared_batches
from ..run.loading import Classifier, load_model
from .exported import exported_features_runner

FEATURES_NODE = "features"


class FeaturesUnavailableError(ModuleRequiredError):
    """The features asked for cannot be taken from this model (an exported file gives the pooled ones only)."""


class PooledFeatures(nn.Module):
    """``body``'s output (a tensor or the ``features`` entry of a dict) as one vector per image."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if isinstance(out, dict):
            out = out[FEATURES_NODE]
        if out.dim() == 4:
            out = F.adaptive_avg_pool2d(out, 1)
        return out.flatten(1)


def stage_names(arch: str, module: nn.Module) -> list[str]:
    """Layers ``--layer`` suggests: the siblings of the architecture's last stage, without the head."""
    spec = get_spec(arch)
    parent = spec.last_stage.rpartition(".")[0]
    container = module.get_submodule(parent) if parent else module
    prefix = f"{parent}." if parent else ""
    return [prefix + name for name, _ in container.named_children() if prefix + name != spec.head]


def feature_module(classifier: Classifier, layer: str | None = None) -> nn.Module:
    """A float32 copy of the classifier that outputs pooled features (before the head, or after ``layer``)."""
    module = classifier.torch_module("embed")
    body = copy.deepcopy(module).float().eval()
    if layer is None:
        head = get_spec(classifier.meta.arch).head
        parent, _, child = head.rpartition(".")
        setattr(body.get_submodule(parent) if parent else body, child, nn.Identity())
        return PooledFeatures(body).eval()
    if layer not in dict(body.named_modules()) or not layer:
        choices = ", ".join(stage_names(classifier.meta.arch, body))
        raise ResnetkitError(f"{classifier.meta.arch} has no layer '{layer}'. Choose one of: {choices}.")
    return PooledFeatures(create_feature_extractor(body, {layer: FEATURES_NODE})).eval()


@dataclass
class FeatureExtractor:
    """A model whose runner outputs pooled features instead of logits (``features``: the classifier's metadata
    and preprocessing with a features runner), plus what an embedding file records about it."""

    features: Classifier
    layer: str | None
    normalize: bool
    model_ref: str | None
    dim: int = field(init=False)

    def __post_init__(self) -> None:
        self.dim = int(self.features.logits(torch.zeros(1, *self.features.meta.preprocessing.input_shape)).shape[1])

    @property
    def ran(self) -> RunInfo:
        """What computes the features, and where."""
        return self.features.ran

    @property
    def info(self) -> dict[str, Any]:
        """The recipe stored with the embeddings, so that queries are embedded the same way, and what ran."""
        meta = self.features.meta
        return {"model": self.model_ref, "arch": meta.arch, "weights": meta.weights, "layer": self.layer,
                "normalize": self.normalize, "dim": self.dim, "preprocessing": meta.preprocessing.to_dict(),
                **self.ran.to_dict()}

    def embed(self, batch: torch.Tensor) -> np.ndarray:
        vectors = self.features.logits(batch).float().numpy().astype(np.float32, copy=False)
        if self.normalize:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors

    def batches(self, sources: Sequence[str], batch_size: int = 16, workers: int | None = None,
                progress: bool | None = None) -> Iterator[tuple[Sequence[str], np.ndarray, list[str | None]]]:
        """Per batch of ``sources``: the sources, their vectors (NaN rows for unreadable files) and errors. Decoded
        as ``classify`` decodes for the device the features run on (``workers``: see
        :func:`~resnetkit.run.classify.default_workers`)."""
        batches = prepared_batches(self.features, sources, batch_size=batch_size, workers=workers)
        for batch in track(batches, len(sources), "embedding", progress, advance=lambda batch: len(batch.sources)):
            vectors = np.full((len(batch.sources), self.dim), np.nan, dtype=np.float32)
            if len(batch.images):
                vectors[batch.readable] = self.embed(batch.images)
            yield batch.sources, vectors, [None if error is None else str(error) for error in batch.errors]


def load_extractor(
    model: Classifier | str | os.PathLike[str],
    *,
    layer: str | None = None,
    normalize: bool = False,
    weights: str | None = None,
    pretrained: bool = True,
    backend: str | None = None,
    precision: str | None = None,
    batch_size: int = 16,
    device: str | Device | None = None,
) -> FeatureExtractor:
    """Load ``model`` (zoo name, .pt artifact or a loaded Classifier) as a features runner on ``backend`` and
    ``device`` (``--device`` words; None: auto)."""
    where = resolve_device(device)
    if isinstance(model, Classifier):
        classifier, ref = model, (model.meta.name if is_zoo_name(model.meta.name) else None)
    else:
        classifier = load_model(model, weights=weights, pretrained=pretrained, options=RunnerOptions(device=where))
        ref = str(model) if is_zoo_name(str(model)) else os.path.abspath(model)
    if classifier.module is None:
        runner = _exported_runner(classifier, layer, backend, precision)
        return FeatureExtractor(Classifier(classifier.meta, runner), layer, normalize, ref)
    module = feature_module(classifier, layer)
    # No backend given: run as the model runs by default (fp16 artifacts stay fp16).
    precision = precision or (classifier.runner.precision if backend is None else None)
    runner = make_runner(module, classifier.meta, backend,
                         RunnerOptions(batch_size=batch_size, precision=precision, device=where))
    return FeatureExtractor(Classifier(classifier.meta, runner, module), layer, normalize, ref)


def _exported_runner(classifier: Classifier, layer: str | None, backend: str | None, precision: str | None) -> Runner:
    """The pooled-features runner of an exported ONNX/OpenVINO graph, as stored; TorchScript files cannot give one."""
    runner = exported_features_runner(classifier)
    if runner is None:
        classifier.torch_module("embed")  # raises: no PyTorch module and no features output
    name = classifier.meta.name
    if layer is not None:
        raise FeaturesUnavailableError(f"{name} is an exported graph: it gives the pooled features only. --layer needs "
                                       f"the PyTorch model: the zoo name ({classifier.meta.arch}) or its .pt file.")
    if backend not in (None, runner.backend) or precision not in (None, runner.precision):
        raise FeaturesUnavailableError(f"The features of {name}'s exported graph run as stored, on {runner.backend} "
                                       f"({runner.precision}); leave out --backend and --precision.")
    return runner


@dataclass
class Embeddings:
    """One row per input: ``vectors[i]`` is NaN where ``errors[i]`` says why the file could not be embedded."""

    sources: list[str]
    vectors: np.ndarray
    errors: list[str | None]
    info: dict[str, Any]

    @property
    def valid(self) -> np.ndarray:
        """Indices of the rows that have an embedding."""
        return np.array([i for i, e in enumerate(self.errors) if e is None], dtype=np.int64)


def collect(extractor: FeatureExtractor, sources: Sequence[str], batch_size: int = 16, workers: int | None = None,
            progress: bool | None = None) -> Embeddings:
    """All batches of ``extractor`` over ``sources`` in memory."""
    parts = list(extractor.batches(sources, batch_size, workers, progress))
    vectors = np.concatenate([v for _, v, _ in parts]) if parts else np.zeros((0, extractor.dim), np.float32)
    errors = [e for _, _, errs in parts for e in errs]
    return Embeddings(list(sources), vectors, errors, extractor.info)


def extract_features(
    model: Classifier | str | os.PathLike[str],
    paths: ImagePaths,
    *,
    layer: str | None = None,
    normalize: bool = False,
    batch_size: int = 16,
    workers: int | None = None,
    weights: str | None = None,
    pretrained: bool = True,
    backend: str | None = None,
    precision: str | None = None,
    device: str | Device | None = None,
    progress: bool | None = None,
) -> Embeddings:
    """Embed image files and folders (walked recursively) with ``model``'s pooled features.

    ``layer`` (e.g. ``layer3``) takes an earlier stage, average-pooled; ``normalize`` gives unit
    vectors. Unreadable files get an error and a NaN row; the rest are still embedded. ``device``: as
    :func:`load_extractor`.
    """
    extractor = load_extractor(model, layer=layer, normalize=normalize, weights=weights, pretrained=pretrained,
                               backend=backend, precision=precision, batch_size=batch_size, device=device)
    sources = [str(p) for p in iter_image_paths(paths)]
    return collect(extractor, sources, batch_size, workers, progress)
