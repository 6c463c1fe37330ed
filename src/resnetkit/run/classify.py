"""Classify images: decode -> the model's preprocessing -> batched forward -> top-k."""

from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import torch

from ..core.device import Device, usable_cores
from ..core.errors import ResnetkitError
from ..core.images import (ImagePaths, PreparedBatch, in_memory_image, iter_image_paths, iter_prepared_batches,
                           prepare_image, stack_inputs, to_model_input)
from .loading import Classifier, load_model


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    score: float


@dataclass
class ImageResult:
    """Top-k predictions for one input, or the reason it could not be classified."""

    source: str
    predictions: list[Prediction] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def top_k(probabilities: torch.Tensor, categories: Sequence[str], k: int) -> list[list[Prediction]]:
    """The ``k`` most probable classes of each row of ``probabilities``."""
    k = min(k, probabilities.shape[1])
    scores, indices = probabilities.topk(k, dim=1)
    return [
        [Prediction(categories[i], i, round(float(s), 6)) for s, i in zip(row_scores.tolist(), row_indices.tolist())]
        for row_scores, row_indices in zip(scores, indices)
    ]


def predict_tensors(model: Classifier, batch: torch.Tensor, k: int) -> list[list[Prediction]]:
    return top_k(model.probabilities(batch), model.meta.categories, k)


def classify(
    model: Classifier | str | os.PathLike[str],
    paths: ImagePaths,
    *,
    top_k: int = 5,
    batch_size: int = 16,
    workers: int | None = None,
) -> list[ImageResult]:
    """Classify image files and folders (walked recursively): one path or several.

    Files that cannot be read get an ``error`` and no predictions; the others are still
    classified. Results come back in input order. Images already in memory: :func:`classify_images`.
    """
    _check_counts(top_k, batch_size)
    classifier = model if isinstance(model, Classifier) else load_model(model)
    sources = [str(p) for p in iter_image_paths(paths)]
    return [r for chunk in iter_classify(classifier, sources, top_k=top_k, batch_size=batch_size, workers=workers)
            for r in chunk]


def classify_images(model: Classifier | str | os.PathLike[str], images: Any, *, top_k: int = 5,
                    batch_size: int = 16) -> list[list[Prediction]]:
    """The top-k of each image already in memory, preprocessed as image files are: one image or a list of PIL
    images, image files' bytes, uint8 arrays (H x W x C) or uint8 tensors (C x H x W); see
    :func:`~resnetkit.core.images.in_memory_image`. An image that cannot be read is an ``ImageError``."""
    _check_counts(top_k, batch_size)
    classifier = model if isinstance(model, Classifier) else load_model(model)
    pictures = images if isinstance(images, (list, tuple)) else [images]
    inputs = [to_model_input(in_memory_image(p), classifier.meta.preprocessing) for p in pictures]
    return [preds for start in range(0, len(inputs), batch_size)
            for preds in predict_tensors(classifier, stack_inputs(inputs[start:start + batch_size]), top_k)]


def _check_counts(top_k: int, batch_size: int) -> None:
    if top_k < 1:
        raise ResnetkitError(f"top_k (--top-k) must be at least 1 (got {top_k}).")
    if batch_size < 1:
        raise ResnetkitError(f"batch_size (--batch-size) must be at least 1 (got {batch_size}).")


def default_workers(device: Device) -> int:
    """Decode workers when none are asked for: every usable core for a GPU, which decoding must keep fed; two
    threads next to CPU inference, which needs the cores itself."""
    return usable_cores() if device.is_cuda else 2


def prepared_batches(classifier: Classifier, sources: Iterable[str], *, batch_size: int = 16,
                     workers: int | None = None) -> Iterator[PreparedBatch]:
    """``sources`` decoded and preprocessed for ``classifier`` ahead of its forward passes: by threads for the CPU;
    for a GPU by worker processes into pinned memory, so copies to the GPU do not block."""
    gpu = classifier.ran.device.is_cuda
    prepare = functools.partial(prepare_image, preprocessing=classifier.meta.preprocessing)
    workers = default_workers(classifier.ran.device) if workers is None else workers
    return iter_prepared_batches(sources, prepare, batch_size=batch_size, workers=workers, processes=gpu,
                                 pin_memory=gpu)


def iter_classify(classifier: Classifier, sources: Iterable[str], *, top_k: int = 5, batch_size: int = 16,
                  workers: int | None = None) -> Iterator[list[ImageResult]]:
    """Classify image files batch by batch, in input order, decoding the next batches during each forward pass.

    Yields one list of results per batch of ``batch_size`` sources; memory stays bounded whatever
    the number of sources. Unreadable files come back with an ``error``. ``workers``: see :func:`default_workers`.
    """
    for batch in prepared_batches(classifier, sources, batch_size=batch_size, workers=workers):
        yield _classify_batch(classifier, batch, top_k)


def _classify_batch(classifier: Classifier, batch: PreparedBatch, k: int) -> list[ImageResult]:
    results = [ImageResult(s, error=None if e is None else str(e)) for s, e in zip(batch.sources, batch.errors)]
    if len(batch.images):
        for position, preds in zip(batch.readable, predict_tensors(classifier, batch.images, k)):
            results[position].predictions = preds
    return results
