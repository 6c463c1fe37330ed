"""Classify images: decode -> the model's preprocessing -> batched forward -> top-k."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Iterable, Iterator, Sequence

import torch

from ..core.errors import ImageError, ResnetkitError
from ..core.images import Prepared, iter_image_paths, iter_prepared
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
    paths: Iterable[str | os.PathLike[str]],
    *,
    top_k: int = 5,
    batch_size: int = 16,
    workers: int = 2,
) -> list[ImageResult]:
    """Classify image files and folders (walked recursively).

    Files that cannot be read get an ``error`` and no predictions; the others are still
    classified. Results come back in input order.
    """
    if top_k < 1:
        raise ResnetkitError("--top-k must be at least 1.")
    classifier = model if isinstance(model, Classifier) else load_model(model)
    sources = [str(p) for p in iter_image_paths(paths)]
    return [r for chunk in iter_classify(classifier, sources, top_k=top_k, batch_size=batch_size, workers=workers)
            for r in chunk]


def iter_classify(classifier: Classifier, sources: Iterable[str], *, top_k: int = 5, batch_size: int = 16,
                  workers: int = 2) -> Iterator[list[ImageResult]]:
    """Classify image files batch by batch, in input order, decoding the next batch during each forward pass.

    Yields one list of results per batch of ``batch_size`` sources; memory stays bounded whatever
    the number of sources. Unreadable files come back with an ``error``.
    """
    for chunk, prepared in iter_prepared(sources, classifier.prepare, batch_size=batch_size, workers=workers):
        yield _classify_prepared(classifier, chunk, prepared, top_k)


def _classify_prepared(classifier: Classifier, sources: list[str], prepared: list[Prepared],
                       k: int) -> list[ImageResult]:
    results = [ImageResult(s, error=str(p) if isinstance(p, ImageError) else None) for s, p in zip(sources, prepared)]
    good = [(r, t) for r, t in zip(results, prepared) if isinstance(t, torch.Tensor)]
    if good:
        for (result, _), preds in zip(good, predict_tensors(classifier, torch.stack([t for _, t in good]), k)):
            result.predictions = preds
    return results
