"""Accuracy of a model on a class-per-folder dataset."""

from __future__ import annotations

import functools
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..backends.base import RunInfo
from ..core.datasets import ImageFileDataset, collate_skipping_bad, labelled_samples, require_folder
from ..core.errors import DatasetError
from ..core.images import prepare_image
from ..core.progress import track
from ..core.spec import RANDOM_WEIGHTS
from .classify import default_workers
from .loading import Classifier, load_model


@dataclass
class EvalReport:
    """Measured accuracy (percent) and throughput of one evaluation run."""

    model: str
    data_dir: str
    top1: float
    top5: float
    n_images: int
    n_skipped: int
    classes: list[str]  # classes present in the data, in model index order
    per_class: dict[str, float]  # class -> top-1 percent
    confusion: list[list[int]]  # rows: true class, columns: predicted, over ``classes``
    images_per_s: float
    seconds: float
    ran: RunInfo  # what computed the logits, and where
    workers: int  # decoding processes
    random_weights: bool  # the model's weights are random: labels and accuracy are meaningless
    skipped_files: list[str] = field(default_factory=list)  # why each was skipped: the message names the file
    subset_of: int | None = None  # with a limit: the images in the folder, of which a fixed random subset was taken

    def to_dict(self) -> dict[str, Any]:
        data = {name: value for name, value in self.__dict__.items() if name != "ran"}
        return {**data, **self.ran.to_dict()}


def evaluate(
    model: Classifier | str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    *,
    batch_size: int = 64,
    limit: int | None = None,
    workers: int | None = None,
    progress: bool | None = None,
    seed: int = 0,
) -> EvalReport:
    """Top-1/top-5 accuracy on ``data_dir`` (one sub-folder per class, matched to the model's classes).

    ``limit`` evaluates a random subset of that many images (fixed ``seed``), spread over classes.
    Unreadable images are skipped and counted, never scored. ``workers`` decoding processes (None: see
    :func:`~resnetkit.run.classify.default_workers`).
    """
    require_folder(data_dir)  # before loading the model, which may mean downloading its weights
    classifier = model if isinstance(model, Classifier) else load_model(model)
    _, samples = labelled_samples(data_dir, classifier.meta.categories)
    subset_of = len(samples) if limit is not None and limit < len(samples) else None
    if subset_of is not None:
        samples = sorted(random.Random(seed).sample(samples, limit), key=lambda s: str(s.path))
    ran = classifier.ran  # builds the runner (auto measures its candidates) before the clock starts
    workers = default_workers(ran.device) if workers is None else workers
    prepare = functools.partial(prepare_image, preprocessing=classifier.meta.preprocessing)
    loader = DataLoader(ImageFileDataset(samples, prepare), batch_size=batch_size, shuffle=False,
                        num_workers=workers, collate_fn=collate_skipping_bad, persistent_workers=False,
                        pin_memory=ran.device.is_cuda)
    num_classes = classifier.meta.num_classes
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    top5_hits = 0
    skipped: list[str] = []
    start = time.perf_counter()
    for batch in track(loader, len(samples), f"evaluating {classifier.meta.name}", progress,
                       advance=lambda b: len(b.labels) + len(b.skipped)):
        skipped += batch.skipped
        if not len(batch.labels):
            continue
        logits = classifier.logits(batch.images)
        k = min(5, num_classes)
        top = logits.topk(k, dim=1).indices
        top5_hits += int((top == batch.labels[:, None]).any(dim=1).sum())
        confusion += torch.bincount(batch.labels * num_classes + top[:, 0], minlength=num_classes ** 2).view(num_classes, num_classes)
    seconds = time.perf_counter() - start
    scored = int(confusion.sum())
    if scored == 0:
        raise DatasetError(f"No readable images in {data_dir} ({len(skipped)} files could not be decoded).")
    report = _report(classifier, ran, workers, str(data_dir), confusion, top5_hits, skipped, seconds)
    report.subset_of = subset_of
    return report


def _report(classifier: Classifier, ran: RunInfo, workers: int, data_dir: str, confusion: torch.Tensor,
            top5_hits: int, skipped: list[str], seconds: float) -> EvalReport:
    present = [i for i in range(confusion.shape[0]) if confusion[i].sum() > 0]
    categories = classifier.meta.categories
    scored = int(confusion.sum())
    sub = confusion[present][:, present]
    return EvalReport(
        model=classifier.meta.name,
        data_dir=data_dir,
        top1=100.0 * int(confusion.diag().sum()) / scored,
        top5=100.0 * top5_hits / scored,
        n_images=scored,
        n_skipped=len(skipped),
        classes=[categories[i] for i in present],
        per_class={categories[i]: 100.0 * int(confusion[i, i]) / int(confusion[i].sum()) for i in present},
        confusion=sub.tolist(),
        images_per_s=scored / seconds if seconds > 0 else float("nan"),
        seconds=seconds,
        ran=ran,
        workers=workers,
        random_weights=classifier.meta.weights == RANDOM_WEIGHTS,
        skipped_files=skipped,
    )
