"""``explain``: heatmap PNGs for the top-k classes of image files, written into one folder.

A class-agnostic method (EigenCAM) gives one PNG per image, which every top-k class of the image lists.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..backends.base import RunInfo, RunnerOptions
from ..core.device import Device, resolve_device
from ..core.errors import ImageError, ResnetkitError
from ..core.fileio import atomic_write, write_text_atomic
from ..core.images import ImagePaths, decode_image, iter_image_paths
from ..core.progress import track
from ..core.spec import RANDOM_WEIGHTS
from ..run.loading import Classifier, load_model
from .cam import Explainer, Heatmap

INDEX_FILE = "explanations.json"


@dataclass(frozen=True)
class HeatmapFile:
    """One of an image's top-k classes and its heatmap's file (shared by every class with a class-agnostic method)."""

    label: str
    index: int
    score: float
    path: str


@dataclass
class ExplainResult:
    """The heatmap files of one image, or why it could not be explained."""

    source: str
    heatmaps: list[HeatmapFile] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ExplainReport:
    """The heatmaps of every image, with the model, the CAM method and what computed them (``explanations.json``)."""

    model: str
    method: str
    class_agnostic: bool  # the method draws one heatmap per image, the same for every class
    ran: RunInfo
    random_weights: bool  # the model's weights are random: its labels, and where it looks, are meaningless
    results: list[ExplainResult]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "method": self.method, "class_agnostic": self.class_agnostic, **self.ran.to_dict(),
                "random_weights": self.random_weights, "results": [r.to_dict() for r in self.results]}


def _file_stem(source: str, used: set[str]) -> str:
    """The image's name without suffix, made unique within this run (same names in other folders)."""
    stem, n = Path(source).stem, 1
    while (stem if n == 1 else f"{stem}-{n}") in used:
        n += 1
    unique = stem if n == 1 else f"{stem}-{n}"
    used.add(unique)
    return unique


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "class"


def _file_name(stem: str, rank: int, heatmap: Heatmap) -> str:
    """``STEM_top<r>_<label>.png``, or ``STEM_<method>.png`` for a class-agnostic heatmap (one per image)."""
    if heatmap.class_agnostic:
        return f"{stem}_{_safe(heatmap.method)}.png"
    return f"{stem}_top{rank}_{_safe(heatmap.prediction.label)}.png"


def explain(
    model: Classifier | str | os.PathLike[str],
    paths: ImagePaths,
    output_dir: str | os.PathLike[str],
    *,
    top_k: int = 3,
    method: str = "gradcam",
    weights: str | None = None,
    pretrained: bool = True,
    device: str | Device | None = None,
    progress: bool | None = None,
) -> ExplainReport:
    """Write ``STEM_top<r>_<label>.png`` heatmaps for the ``top_k`` classes of each image into ``output_dir``
    (a class-agnostic ``method``: one ``STEM_<method>.png`` per image, for all its ``top_k`` classes).

    Also writes ``explanations.json`` (the report: sources, labels, scores, files). Unreadable images get an
    error; the others are still explained; when none could be, nothing is written. Needs a PyTorch model (zoo
    name or .pt artifact). ``device``: ``--device`` words (None: auto), for a model given by reference or a
    loaded Classifier.
    """
    if top_k < 1:
        raise ResnetkitError("--top-k must be at least 1.")
    sources = [str(p) for p in iter_image_paths(paths)]
    if not sources:
        raise ResnetkitError("No image files found in the given paths.")
    where = resolve_device(device)
    classifier = model if isinstance(model, Classifier) else load_model(
        model, weights=weights, pretrained=pretrained, options=RunnerOptions(device=where))
    explainer = Explainer(classifier, method, where)
    folder = Path(output_dir)
    used: set[str] = set()
    results = []
    for source in track(sources, len(sources), "explaining", progress):
        result = ExplainResult(source)
        try:
            heatmaps = explainer.explain(decode_image(source), top_k)
        except ImageError as exc:
            result.error = str(exc)
        else:
            stem = _file_stem(source, used)
            for rank, heatmap in enumerate(heatmaps, 1):
                path = folder / _file_name(stem, rank, heatmap)
                with atomic_write(path) as handle:
                    handle.write(heatmap.png(classifier.meta.name))
                result.heatmaps += [HeatmapFile(p.label, p.index, p.score, str(path)) for p in heatmap.predictions]
        results.append(result)
    report = ExplainReport(classifier.meta.name, method, explainer.class_agnostic, explainer.ran,
                           classifier.meta.weights == RANDOM_WEIGHTS, results)
    if any(r.heatmaps for r in results):
        write_text_atomic(folder / INDEX_FILE, json.dumps(report.to_dict(), indent=2))
    return report
