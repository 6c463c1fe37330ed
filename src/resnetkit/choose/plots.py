"""Charts written as PNG files (matplotlib, headless backend)."""

from __future__ import annotations

import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from .records import BenchRecord  # noqa: E402
from ..core.fileio import atomic_write  # noqa: E402
from .recommend import pareto_front  # noqa: E402


def _save(figure: plt.Figure, path: str | os.PathLike[str]) -> None:
    with atomic_write(path) as handle:
        figure.savefig(handle, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)


def plot_tradeoff(records: Sequence[BenchRecord], path: str | os.PathLike[str], title: str = "") -> None:
    """Top-1 vs measured p50 latency (batch 1), Pareto front joined by a line, the median's 95 % CI as bars."""
    scored = [r for r in records if r.top1 is not None]
    figure, axes = plt.subplots(figsize=(8, 5.5))
    front = sorted(pareto_front(scored), key=lambda r: r.latency_ms_p50)
    on_front = {id(r) for r in front}
    for record in scored:
        if record.latency_ms_p50_ci:  # the 95 % confidence interval of the median, as in the table
            low, high = record.latency_ms_p50_ci
            axes.errorbar(record.latency_ms_p50, record.top1, xerr=[[record.latency_ms_p50 - low],
                          [high - record.latency_ms_p50]], fmt="none", ecolor="lightgray", capsize=3, zorder=1)
        marker = "o" if id(record) in on_front else "x"
        axes.scatter(record.latency_ms_p50, record.top1, marker=marker, s=50, color="tab:blue" if marker == "o" else "gray")
        axes.annotate(record.label, (record.latency_ms_p50, record.top1), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if front:
        axes.plot([r.latency_ms_p50 for r in front], [r.top1 for r in front], "--", color="tab:blue", label="Pareto front")
        axes.legend(loc="lower right")
    axes.set_xscale("log")
    # labels at 1, 2, 5, 10, 20, ... ms ("20" rather than "2x10^1"); unlabelled minor ticks in between
    axes.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set_xlabel("p50 latency at batch 1 (ms, measured on this machine, log scale)")
    axes.set_ylabel("top-1 (%)")
    axes.set_title(title or "accuracy vs latency")
    axes.grid(True, alpha=0.3)
    _save(figure, path)


def plot_confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: str | os.PathLike[str], title: str) -> None:
    """Confusion matrix heat map (rows: true class, columns: predicted), counts in cells if small."""
    size = max(4.0, min(0.45 * len(classes) + 2, 30.0))
    figure, axes = plt.subplots(figsize=(size + 1, size))
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046)
    if len(classes) <= 30:
        axes.set_xticks(range(len(classes)), classes, rotation=90, fontsize=8)
        axes.set_yticks(range(len(classes)), classes, fontsize=8)
        peak = max((max(row) for row in matrix), default=0)
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                if count:
                    axes.text(j, i, str(count), ha="center", va="center", fontsize=7,
                              color="white" if count > peak / 2 else "black")
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    _save(figure, path)
