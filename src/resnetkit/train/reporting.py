"""What a run shows and leaves behind: a progress bar or log lines, metrics.csv/json, curves.png."""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..core.fileio import atomic_write, write_text_atomic

Log = Callable[[str], None]
METRICS_JSON = "metrics.json"  # the run's summary and every epoch's row
COLUMNS = ("epoch", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_images", "images", "skipped", "seconds",
           "images_per_s", "data_wait")
STATUS_EVERY_S = 0.5  # the bar's status (which waits for the device) is read at most this often


def stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class EpochProgress:
    """A rich bar on a terminal; otherwise a log line about every fifth of the epoch."""

    def __init__(self, log: Log, enabled: bool | None = None) -> None:
        self.log = log
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._bar: Progress | None = None

    def start(self, title: str, total: int, done: int = 0) -> None:
        self.title, self.total, self.done = title, total, done
        self.every = total // 5 if total >= 10 else total  # about five lines per epoch, none for short ones
        self.started = self._status_at = time.perf_counter()
        if self.enabled:
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[status]}"), TimeRemainingColumn(), transient=True)
            self._bar.start()
            self._task = self._bar.add_task(title, total=total, completed=done, status="")

    def advance(self, status: Callable[[], str]) -> None:
        """One batch done; ``status()`` is called only when shown (it may wait for the device)."""
        self.done += 1
        if self._bar is not None:
            now = time.perf_counter()
            shown = now - self._status_at >= STATUS_EVERY_S or self.done == self.total
            self._bar.update(self._task, advance=1, **({"status": status()} if shown else {}))
            self._status_at = now if shown else self._status_at
        elif self.done % self.every == 0 and self.done < self.total:
            self.log(f"{self.title}: batch {self.done}/{self.total} {status()} ({time.perf_counter() - self.started:.0f} s)")

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def format_row(row: dict[str, Any], epochs: int) -> str:
    """One epoch as a log line."""
    parts = [f"epoch {row['epoch']}/{epochs}", f"lr {row['lr']:.3g}", f"train loss {row['train_loss']:.4f}",
             f"acc {row['train_top1']:.2f}%"]
    if row.get("val_top1") is not None:
        parts.append(f"val loss {row['val_loss']:.4f} acc {row['val_top1']:.2f}%")
    parts.append(f"{row['images_per_s']:.0f} img/s")
    if row.get("data_wait") is not None:  # absent in runs saved before it was measured
        parts.append(f"{100 * row['data_wait']:.0f}% of the time waiting for data")
    if row["skipped"]:
        parts.append(f"{row['skipped']} unreadable file(s) skipped")
    return " | ".join(parts)


def write_metrics(run_dir: Path, history: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """Per-epoch ``metrics.csv``, ``metrics.json`` (epochs + summary) and ``curves.png``."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    write_text_atomic(run_dir / "metrics.csv", buffer.getvalue())
    write_text_atomic(run_dir / METRICS_JSON, json.dumps({"summary": summary, "epochs": history}, indent=2) + "\n")
    if history:
        plot_curves(run_dir / "curves.png", history)


def plot_curves(path: Path, history: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val"):
        if history[0].get(f"{split}_loss") is None:
            continue
        loss_ax.plot(epochs, [row[f"{split}_loss"] for row in history], marker="o", label=split)
        acc_ax.plot(epochs, [row[f"{split}_top1"] for row in history], marker="o", label=split)
    for ax, title in ((loss_ax, "loss"), (acc_ax, "top-1 accuracy (%)")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_write(path) as handle:
        fig.savefig(handle, format="png", dpi=100)
    plt.close(fig)
