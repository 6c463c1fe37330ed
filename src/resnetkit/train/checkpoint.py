"""``best.pt`` / ``last.pt``: resnetkit artifacts (usable as model references) plus, in ``last.pt``,
everything ``--resume`` needs: optimizer, scheduler, scaler, progress and RNG states."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.artifacts import save_artifact
from ..core.spec import ModelMeta
from ..core.weights import safe_load
from .config import TrainConfig, TrainingError

BEST, LAST = "best.pt", "last.pt"


@dataclass
class Progress:
    """How far a run got. ``step`` > 0 only when it was interrupted inside an epoch."""

    epoch: int = 0  # completed epochs
    step: int = 0  # batches done in the unfinished epoch
    partial: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])  # this process: loss sum, correct, seen, skipped
    best_value: float | None = None
    best_epoch: int = 0
    stale_epochs: int = 0  # epochs since the best, for early stopping
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Resumable:
    """The state of a run read back from ``last.pt``."""

    config: TrainConfig
    meta: ModelMeta
    model_state: dict[str, torch.Tensor]
    progress: Progress
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any]
    ranks: list[dict[str, Any]]  # one per process, see rank_state


def rank_state(partial: list[float]) -> dict[str, Any]:
    """What differs between processes: RNG states and the unfinished epoch's partial sums."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "partial": list(partial)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rank_state(state: dict[str, Any]) -> list[float]:
    """Set the RNG states saved by :func:`rank_state`; returns the partial sums."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    return list(state["partial"])


def with_training_record(meta: ModelMeta, config: TrainConfig, progress: Progress) -> ModelMeta:
    """``meta`` carrying the training config and the best epoch's metrics in ``extra``."""
    best = next((row for row in progress.history if row["epoch"] == progress.best_epoch), None)
    return meta.replace(extra={**meta.extra, "train": config.to_dict(), "metrics": best})


def save_best(run_dir: Path, module: nn.Module, meta: ModelMeta) -> None:
    save_artifact(run_dir / BEST, module, meta)


def save_last(run_dir: Path, module: nn.Module, meta: ModelMeta, config: TrainConfig, progress: Progress,
              optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any, ranks: list[dict[str, Any]]) -> None:
    state = {"config": config.to_dict(), "progress": progress.to_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "ranks": ranks}
    save_artifact(run_dir / LAST, module, meta, additional={"train_state": state})


def load_resumable(run_dir: str | Path) -> Resumable:
    path = Path(run_dir) / LAST
    if not path.is_file():
        raise TrainingError(f"Nothing to resume: {path} does not exist. Pass the -o folder of an earlier run.")
    payload = safe_load(path)
    state = payload.get("train_state") if isinstance(payload, dict) else None
    if state is None:
        raise TrainingError(f"{path} is a model file without training state; it cannot be resumed.")
    return Resumable(
        config=TrainConfig.from_dict(state["config"]),
        meta=ModelMeta.from_dict(payload["meta"]),
        model_state=payload["state_dict"],
        progress=Progress(**state["progress"]),
        optimizer=state["optimizer"],
        scheduler=state["scheduler"],
        scaler=state["scaler"],
        ranks=state["ranks"],
    )
