"""Class-per-folder datasets shared by evaluation and training."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import Dataset

from .errors import DatasetError, ImageError
from .images import decode_image, images_under, stack_inputs


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


def require_folder(root: str | os.PathLike[str]) -> Path:
    """``root`` as a Path; a clear :class:`DatasetError` if it is not a folder."""
    base = Path(root)
    if not base.is_dir():
        raise DatasetError(f"No such folder: {base}. Expected a folder with one sub-folder of images per class.")
    return base


def scan_class_folders(root: str | os.PathLike[str]) -> tuple[list[str], list[tuple[str, list[Path]]]]:
    """Sorted class folder names of ``root`` and, for each, its image files (sorted)."""
    base = require_folder(root)
    folders = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DatasetError(f"{base} has no class sub-folders. Expected {base}/<class name>/<image files>.")
    listing = [(f.name, images_under(f)) for f in folders]
    empty = [name for name, files in listing if not files]
    if empty:
        raise DatasetError(f"Class folder(s) without images in {base}: {', '.join(empty)}.")
    return [name for name, _ in listing], listing


def _normalize(name: str) -> str:
    return name.strip().lower().replace("_", " ")


@lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ILSVRC-2012 WordNet ids in class-index order (source: timm's imagenet_synsets.txt)."""
    text = resources.files("resnetkit.core").joinpath("resources/imagenet_wnids.txt").read_text()
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def match_folders_to_categories(folders: Sequence[str], categories: Sequence[str]) -> dict[str, int]:
    """Map each folder to a class index by name (case-insensitive, '_' = space) or ImageNet WordNet id."""
    by_name = {_normalize(c): i for i, c in enumerate(categories)}
    by_wnid = {w: i for i, w in enumerate(imagenet_wnids())} if len(categories) == 1000 else {}
    mapping, unmatched = {}, []
    for folder in folders:
        index = by_name.get(_normalize(folder), by_wnid.get(folder.strip()))
        if index is None:
            unmatched.append(folder)
        else:
            mapping[folder] = index
    if unmatched:
        shown = ", ".join(repr(f) for f in unmatched[:10]) + (" ..." if len(unmatched) > 10 else "")
        example = ", ".join(list(categories)[:5])
        raise DatasetError(
            f"{len(unmatched)} folder(s) match no class of the model: {shown}. Folder names must be the model's "
            f"class names (case-insensitive, '_' for space; e.g. {example}) or ImageNet WordNet ids (n01440764)."
        )
    return mapping


def labelled_samples(root: str | os.PathLike[str], categories: Sequence[str] | None = None) -> tuple[list[str], list[Sample]]:
    """Samples of a class-per-folder dataset.

    With ``categories`` (a model's classes) folders are matched to those indices and the
    returned class list is ``categories``; without, classes are the sorted folder names.
    """
    folders, listing = scan_class_folders(root)
    if categories is None:
        mapping = {name: i for i, name in enumerate(folders)}
        classes = folders
    else:
        mapping = match_folders_to_categories(folders, categories)
        classes = list(categories)
    samples = [Sample(path, mapping[name]) for name, files in listing for path in files]
    return classes, samples


@dataclass(frozen=True)
class DecodeAndTransform:
    """A file as a PIL image through ``transform`` (e.g. training augmentation); picklable for loader workers."""

    transform: Callable[[Any], torch.Tensor]

    def __call__(self, path: Path) -> torch.Tensor:
        return self.transform(decode_image(path))


class ImageFileDataset(Dataset):
    """Loads images on access with ``load`` (path -> tensor) as ``(image, label, path)``; an unreadable file comes
    back as ``(None, label, why)``, ``why`` the error message, which names the file.
    ``load``: :class:`DecodeAndTransform`, or ``functools.partial(prepare_image, preprocessing=...)``."""

    def __init__(self, samples: Sequence[Sample], load: Callable[[Path], torch.Tensor]) -> None:
        self.samples = list(samples)
        self.load = load

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str] | tuple[None, int, str]:
        sample = self.samples[index]
        try:
            return self.load(sample.path), sample.label, str(sample.path)
        except ImageError as exc:  # its message names the file and says what is wrong with it
            return None, sample.label, str(exc)


@dataclass
class Batch:
    images: torch.Tensor
    labels: torch.Tensor
    skipped: list[str]  # why each file that could not be decoded was skipped (each message names the file)

    def pin_memory(self) -> "Batch":
        """Page-locked tensors, which a GPU copies without blocking (DataLoader calls this with pin_memory=True)."""
        return Batch(self.images.pin_memory(), self.labels.pin_memory(), self.skipped)


def collate_skipping_bad(items: list[tuple[Any, int, str]]) -> Batch:
    """Stack the good items; report why the bad ones (``None`` images) were skipped."""
    good = [(image, label) for image, label, _ in items if image is not None]
    skipped = [path for image, _, path in items if image is None]
    if not good:
        return Batch(torch.empty(0), torch.empty(0, dtype=torch.long), skipped)
    return Batch(stack_inputs([g[0] for g in good]), torch.tensor([g[1] for g in good]), skipped)
