"""Training data: folder layout, class checks, train/val split, augmentation, sharded loaders."""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Sampler
from torchvision.transforms import InterpolationMode, v2

from ..core.datasets import DecodeAndTransform, ImageFileDataset, Sample, collate_skipping_bad, labelled_samples, scan_class_folders
from ..core.errors import DatasetError
from ..core.spec import Preprocessing

SMALL_INPUT = 64  # inputs up to this size get CIFAR-style pad-and-crop instead of random-resized-crop
VAL_FOLDER_NAMES = ("val", "valid", "validation")
SAME_FORMAT = {".jpeg": ".jpg", ".tif": ".tiff"}


@dataclass
class DataSplits:
    """Class names (model index order) and the labelled samples of each split."""

    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    train_dir: str
    val_source: str  # a folder, "split 0.1 of ...", or "none"


def rare_format_files(samples: Sequence[Sample], share: float = 0.02) -> list[Path]:
    """Files whose format is rare in their class (under ``share``), such as a GIF placeholder among JPEGs.

    They decode, so they train; they are worth a look because such files are often junk.
    """
    by_label: dict[int, list[Path]] = {}
    for sample in samples:
        by_label.setdefault(sample.label, []).append(sample.path)
    rare: list[Path] = []
    for paths in by_label.values():
        counts = Counter(_format(p) for p in paths)
        rare += [p for p in paths if counts[_format(p)] < share * len(paths)]
    return rare


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    return SAME_FORMAT.get(suffix, suffix)


def train_transform(pre: Preprocessing, augment: str) -> Callable[[Any], torch.Tensor]:
    """Augmentation for the model's input size, ending in the model's normalization."""
    if augment == "none":
        return pre.transform()
    interpolation = InterpolationMode(pre.interpolation)
    if pre.crop_size <= SMALL_INPUT:
        geometric = [v2.Resize(pre.resize_size, interpolation=interpolation, antialias=True),
                     v2.CenterCrop(pre.crop_size), v2.RandomCrop(pre.crop_size, padding=pre.crop_size // 8)]
    else:
        geometric = [v2.RandomResizedCrop(pre.crop_size, interpolation=interpolation, antialias=True)]
    return v2.Compose([*geometric, v2.RandomHorizontalFlip(), v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(list(pre.mean), list(pre.std))])


def resolve_folders(data_dir: str, val_dir: str | None) -> tuple[str, str | None]:
    """``DATA_DIR`` may be a class-per-folder set or hold ``train/`` and ``val/`` (as hymenoptera does)."""
    base = Path(data_dir)
    train = base / "train"
    if train.is_dir() and any(p.is_dir() for p in train.iterdir()):
        found = next((base / n for n in VAL_FOLDER_NAMES if (base / n).is_dir()), None)
        return str(train), val_dir or (str(found) if found else None)
    return data_dir, val_dir


def load_splits(data_dir: str, val_dir: str | None, val_split: float | None, seed: int,
                categories: Sequence[str] | None = None) -> DataSplits:
    """Samples for training and validation; classes from the folders or matched to ``categories``."""
    train_dir, val_dir = resolve_folders(data_dir, val_dir)
    classes, train = labelled_samples(train_dir, categories)
    if categories is None and len(classes) < 2:
        raise DatasetError(f"{train_dir} has a single class folder ({classes[0]}); a classifier needs at least two.")
    if val_dir:
        check_same_classes(train_dir, val_dir)
        _, val = labelled_samples(val_dir, classes)
        return DataSplits(classes, train, val, train_dir, val_dir)
    fraction = 0.1 if val_split is None else val_split
    if fraction == 0:
        return DataSplits(classes, train, [], train_dir, "none")
    train, val = stratified_split(train, fraction, seed)
    return DataSplits(classes, train, val, train_dir, f"{fraction:g} of {train_dir} (seed {seed})")


def check_same_classes(train_dir: str, val_dir: str) -> None:
    train_classes, _ = scan_class_folders(train_dir)
    val_classes, _ = scan_class_folders(val_dir)
    missing = sorted(set(train_classes) - set(val_classes))
    extra = sorted(set(val_classes) - set(train_classes))
    if missing or extra:
        raise DatasetError(
            f"Train and validation classes differ: {val_dir} lacks {missing or 'nothing'} and has extra "
            f"{extra or 'nothing'}. Both folders need the same class sub-folders."
        )


def stratified_split(samples: Sequence[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Hold out ``fraction`` of each class (at least one image of classes with two or more)."""
    rng = random.Random(seed)
    train: list[Sample] = []
    val: list[Sample] = []
    for label in sorted({s.label for s in samples}):
        members = [s for s in samples if s.label == label]
        rng.shuffle(members)
        held = min(len(members) - 1, max(1, round(fraction * len(members))))
        val += members[:held]
        train += members[held:]
    return train, val


class ShardedSampler(Sampler[int]):
    """Epoch-seeded shuffle, padded and split across ``world`` ranks, optionally skipping a prefix.

    The order depends only on (seed, epoch), so a resumed run sees the same batches.
    """

    def __init__(self, size: int, *, shuffle: bool, seed: int, rank: int = 0, world: int = 1, pad: bool = True) -> None:
        self.size, self.shuffle, self.seed, self.rank, self.world, self.pad = size, shuffle, seed, rank, world, pad
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def indices(self) -> list[int]:
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)).tolist()
        else:
            order = list(range(self.size))
        if self.pad and self.world > 1:
            total = math.ceil(self.size / self.world) * self.world
            order += order[: total - self.size]
        return order[self.rank :: self.world]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start :])

    def __len__(self) -> int:
        return len(self.indices()) - self.start


def make_loader(samples: Sequence[Sample], transform: Callable[[Any], torch.Tensor], sampler: ShardedSampler,
                batch_size: int, workers: int) -> DataLoader:
    """A loader of :class:`~resnetkit.core.datasets.Batch` es; unreadable files are skipped and reported."""
    return DataLoader(ImageFileDataset(samples, DecodeAndTransform(transform)), batch_size=batch_size, sampler=sampler,
                      num_workers=workers, collate_fn=collate_skipping_bad, persistent_workers=False,
                      generator=torch.Generator().manual_seed(sampler.seed + sampler.epoch))
