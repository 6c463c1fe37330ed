"""Classify images: decode -> the model's preprocessing -> batched forward -> top-k."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import torch

from ..core.errors import ImageError, ResnetkitError
from ..core.images import decode_image, iter_image_paths
from ..core.loading import Classifier, load_model


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
    transform = classifier.transform

    def prepare(path: str) -> torch.Tensor | ImageError:
        try:
            return transform(decode_image(path))
        except ImageError as exc:
            return exc

    results = [ImageResult(source) for source in sources]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # PIL decode releases the GIL
        for start in range(0, len(sources), batch_size):
            chunk = list(pool.map(prepare, sources[start:start + batch_size]))
            good = [(start + i, t) for i, t in enumerate(chunk) if isinstance(t, torch.Tensor)]
            for i, item in enumerate(chunk):
                if isinstance(item, ImageError):
                    results[start + i].error = str(item)
            if good:
                predictions = predict_tensors(classifier, torch.stack([t for _, t in good]), top_k)
                for (index, _), preds in zip(good, predictions):
                    results[index].predictions = preds
    return results
