"""Distillation with its control: the same student trained the same way without the teacher."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..core.fileio import write_text_atomic
from . import checkpoint as ckpt
from .api import resume, run
from .config import TrainConfig, TrainingInterrupted
from .reporting import Log, stderr_log

BASELINE_DIR = "baseline"


def run_or_resume(config: TrainConfig, log: Log, progress_bar: bool | None) -> dict[str, Any]:
    """Resume ``config.out_dir`` (for ``config.epochs``) if it holds a run, else start it."""
    if (Path(str(config.out_dir)) / ckpt.LAST).exists():
        return resume(str(config.out_dir), epochs=config.epochs, workers=config.workers, log=log,
                      progress_bar=progress_bar)
    return run(config, log=log, progress_bar=progress_bar)


def baseline_config(config: TrainConfig) -> TrainConfig:
    """``config`` without the teacher: same student, classes (the distilled student's, from the teacher), data,
    schedule and seed; plain cross-entropy."""
    classes = list(ckpt.load_resumable(str(config.out_dir)).meta.categories)
    return config.replace(task="finetune" if config.pretrained else "train", teacher=None, classes=classes,
                          out_dir=str(Path(str(config.out_dir)) / BASELINE_DIR))


def distill_with_baseline(config: TrainConfig, *, log: Log = stderr_log, progress_bar: bool | None = None,
                          resuming: bool = False) -> dict[str, Any]:
    """Distil (or resume distilling), then train the baseline; ``distill_report.json`` compares them."""
    distilled = (resume(str(config.out_dir), epochs=config.epochs, workers=config.workers, log=log,
                        progress_bar=progress_bar) if resuming else run(config, log=log, progress_bar=progress_bar))
    log("baseline: the same student without the teacher")
    try:
        baseline = run_or_resume(baseline_config(config), log, progress_bar)
    except TrainingInterrupted as exc:  # resuming the distillation's folder finishes the baseline and the report
        raise TrainingInterrupted(f"{exc} (Or --resume {config.out_dir}, which finishes the baseline and writes "
                                  "distill_report.json.)") from None
    report = {"teacher": config.teacher, "student": config.model, "temperature": config.temperature, "alpha": config.alpha,
              "epochs": config.epochs, "distilled": _outcome(distilled), "baseline": _outcome(baseline)}
    write_text_atomic(Path(str(config.out_dir)) / "distill_report.json", json.dumps(report, indent=2) + "\n")
    return report


def _outcome(summary: dict[str, Any]) -> dict[str, Any]:
    best, final = summary["best"] or {}, summary["final"] or {}
    return {"best_epoch": summary["best_epoch"], "best_val_top1": best.get("val_top1"),
            "final_val_top1": final.get("val_top1"), "final_train_loss": final.get("train_loss"),
            "val_images": final.get("val_images")}
