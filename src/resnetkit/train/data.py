"""Training data: folder layout, class checks, train/val split, augmentation, sharded loaders, normalization on the device."""

from __future__ import annotations

import math
import random
import signal
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import InterpolationMode, v2

from ..core.datasets import (DecodeAndTransform, ImageFileDataset, Sample, collate_skipping_bad, labelled_samples,
                             scan_class_folders)
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
    """Augmentation for the model's input size: PIL image -> uint8 CHW tensor (:class:`Normalize` finishes it)."""
    if augment == "none":
        return eval_transform(pre)
    interpolation = InterpolationMode(pre.interpolation)
    if pre.crop_size <= SMALL_INPUT:
        geometric = [v2.Resize(pre.resize_size, interpolation=interpolation, antialias=True),
                     v2.CenterCrop(pre.crop_size), v2.RandomCrop(pre.crop_size, padding=pre.crop_size // 8)]
    else:
        geometric = [v2.RandomResizedCrop(pre.crop_size, interpolation=interpolation, antialias=True)]
    return v2.Compose([*geometric, v2.RandomHorizontalFlip(), v2.PILToTensor()])


def eval_transform(pre: Preprocessing) -> Callable[[Any], torch.Tensor]:
    """The model's own resize and center-crop: PIL image -> uint8 CHW tensor (:class:`Normalize` finishes it)."""
    interpolation = InterpolationMode(pre.interpolation)
    return v2.Compose([v2.Resize(pre.resize_size, interpolation=interpolation, antialias=True),
                       v2.CenterCrop(pre.crop_size), v2.PILToTensor()])


class Normalize:
    """uint8 batches -> the model's normalized float32 input, on the training device and in its memory format.

    Loader workers hand over uint8 images (a quarter of float32's bytes to pass between processes, pin and
    copy to the GPU); the scaling and normalization run here, on the device, with the same operations as
    torchvision's ``ToDtype(scale=True)`` and ``Normalize``.
    """

    def __init__(self, pre: Preprocessing, device: torch.device, memory_format: torch.memory_format) -> None:
        self.mean = torch.tensor(pre.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(pre.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.device, self.memory_format = device, memory_format

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        return images.to(torch.float32).mul_(1.0 / 255).sub_(self.mean).div_(self.std)


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
        if Path(val_dir).resolve() == Path(train_dir).resolve():
            raise DatasetError(f"The validation folder is the training folder ({train_dir}): its accuracy would be on "
                               "images the model trained on. Give another --val, or leave it out to hold out "
                               "--val-split of each class.")
        if val_split is not None:
            raise DatasetError(f"--val-split holds images out of {train_dir} only when there is no validation folder, "
                               f"and there is one ({val_dir}): drop --val-split, or point DATA_DIR at the training "
                               "folder itself.")
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


class ShardedSampler(Sampler[tuple[int, int]]):
    """Epoch-seeded shuffle, padded and split across ``world`` ranks, optionally skipping a prefix.

    The order depends only on (seed, epoch), so a resumed run sees the same batches. It yields
    ``(epoch, index)`` keys: :class:`SeededImages` draws each image's augmentation from them.
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

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(self.epoch, index) for index in self.indices()[self.start :]])

    def __len__(self) -> int:
        return len(self.indices()) - self.start


class SeededImages(Dataset):
    """Images decoded and transformed by key ``(epoch, index)``, each with random augmentation drawn from its
    own seed (run seed, epoch, index): the same batches with any number of workers, and after a resume
    inside an epoch. Unreadable files come back as ``None`` (see :class:`ImageFileDataset`)."""

    def __init__(self, samples: Sequence[Sample], transform: Callable[[Any], torch.Tensor], seed: int) -> None:
        self.images = ImageFileDataset(samples, DecodeAndTransform(transform))
        self.seed = seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor | None, int, str]:
        epoch, index = key
        with torch.random.fork_rng(devices=[]):  # the caller's random state stays as it was
            # the CPU generator, which the transforms draw from (torch.manual_seed also queues GPU seeding, and
            # took 0.65 ms per call in a training process, more than decoding a CIFAR image)
            torch.default_generator.manual_seed(((self.seed * 1_000_003 + epoch) * 1_000_000_007 + index) % 2**63)
            return self.images[index]


def ignore_ctrl_c(worker_id: int) -> None:
    """Loader workers leave Ctrl-C to the training process, which finishes its step and saves."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(samples: Sequence[Sample], transform: Callable[[Any], torch.Tensor], sampler: ShardedSampler,
                batch_size: int, loader_options: dict[str, Any]) -> DataLoader:
    """A loader of uint8 :class:`Batch` es (``loader_options``: workers, pinning, see ``Hardware.loader_options``);
    unreadable files are skipped and reported. With persistent workers, make it once and iterate it every epoch
    after ``sampler.set_epoch``."""
    return DataLoader(SeededImages(samples, transform, sampler.seed), batch_size=batch_size, sampler=sampler,
                      collate_fn=collate_skipping_bad, generator=torch.Generator().manual_seed(sampler.seed),
                      worker_init_fn=ignore_ctrl_c, **loader_options)
