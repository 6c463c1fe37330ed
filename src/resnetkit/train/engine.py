"""The one training loop behind finetune, train, distill and ``finetune_module``.

One :class:`Trainer` runs epochs of accumulated, clipped, optionally mixed-precision steps
on a sharded loader, validates, keeps best/last checkpoints, stops early, and on Ctrl-C
saves a checkpoint that resumes at the same batch with the same random state.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..core.datasets import Batch
from ..core.errors import DatasetError
from ..core.spec import ModelMeta
from ..core.zoo import get_spec
from . import checkpoint as ckpt
from .config import TrainConfig, TrainingError, TrainingInterrupted
from .data import DataSplits, ShardedSampler, make_loader, train_transform
from .distributed import Dist
from .optim import freeze, make_optimizer, make_scheduler, param_groups
from .reporting import EpochProgress, Log, format_row, write_metrics

Objective = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
OOM_MARKERS = ("out of memory", "can't allocate memory", "not enough memory")


class StepRunner:
    """Forward, loss, backward (scaled, accumulated) and optimizer steps (clipped) of one model."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, objective: Objective,
                 config: TrainConfig, device: torch.device) -> None:
        self.model, self.optimizer, self.objective, self.config, self.device = model, optimizer, objective, config, device
        self.amp_dtype = (torch.float16 if device.type == "cuda" else torch.bfloat16) if config.amp else None
        self.scaler = torch.amp.GradScaler(device.type, enabled=config.amp and device.type == "cuda")
        
    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None)

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(self.device, non_blocking=True, memory_format=self.config.memory_format)

    def forward_backward(self, images: torch.Tensor, labels: torch.Tensor, sync: bool = True) -> tuple[float, int]:
        """Accumulate the gradients of one batch; returns (loss sum, correct predictions)."""
        images, labels = self.inputs(images), labels.to(self.device)
        no_sync = getattr(self.model, "no_sync", None)
        with contextlib.nullcontext() if sync or no_sync is None else no_sync(), out_of_memory_advice(len(labels)):
            with self.autocast():
                logits = self.model(images)
                loss = self.objective(images, logits, labels)
            if not torch.isfinite(loss):
                raise TrainingError(f"The loss became {loss.item()}; lower --lr (or enable --clip-grad).")
            self.scaler.scale(loss / self.config.accum_steps).backward()
        return loss.item() * len(labels), int((logits.argmax(1) == labels).sum())

    def optimizer_step(self) -> None:
        if self.config.clip_grad:
            self.scaler.unscale_(self.optimizer)
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            nn.utils.clip_grad_norm_(params, self.config.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)


@contextlib.contextmanager
def out_of_memory_advice(batch_size: int) -> Iterator[None]:
    """Turn an allocation failure into advice on batch size and accumulation."""
    try:
        yield
    except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError too
        if not any(marker in str(exc).lower() for marker in OOM_MARKERS):
            raise
        raise TrainingError(
            f"Out of memory with a batch of {batch_size} images. Lower --batch-size (e.g. {max(1, batch_size // 2)}) "
            "and raise --accum-steps to keep the same effective batch."
        ) from None


@contextlib.contextmanager
def ctrl_c_flag(enabled: bool) -> Iterator[threading.Event]:
    """The first Ctrl-C sets the event (the loop saves and stops); a second one interrupts at once."""
    flag = threading.Event()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


class Trainer:
    """Trains ``module`` (in place) on ``splits`` with ``objective``; writes to ``run_dir`` if given."""

    def __init__(self, module: nn.Module, meta: ModelMeta, config: TrainConfig, splits: DataSplits,
                 objective: Objective, ctx: Dist, run_dir: Path | None, log: Log,
                 resume: ckpt.Resumable | None = None, progress_bar: bool | None = None) -> None:
        self.meta, self.config, self.splits, self.ctx, self.run_dir = meta, config, splits, ctx, run_dir
        self.log = log if ctx.is_main else (lambda message: None)
        self.module = module.to(ctx.device, memory_format=config.memory_format)
        self.frozen_norms = freeze(self.module, meta.arch, config.mode)
        optimizer = make_optimizer(param_groups(self.module, get_spec(meta.arch).head, config), config)
        self.step = StepRunner(ctx.wrap(self.module), optimizer, objective, config, ctx.device)
        self.train_sampler = ShardedSampler(len(splits.train), shuffle=True, seed=config.seed, rank=ctx.rank, world=ctx.world)
        self.val_sampler = ShardedSampler(len(splits.val), shuffle=False, seed=config.seed, rank=ctx.rank, world=ctx.world, pad=False)
        self.batches_per_epoch = -(-len(self.train_sampler) // config.batch_size)
        steps_per_epoch = -(-self.batches_per_epoch // config.accum_steps)
        self.scheduler = make_scheduler(optimizer, config, steps_per_epoch)
        self.train_tf, self.eval_tf = train_transform(meta.preprocessing, config.augment), meta.preprocessing.transform()
        self.bar = EpochProgress(self.log, progress_bar if ctx.is_main else False)
        self.progress = ckpt.Progress()
        if resume is not None:
            self._restore(resume)

    def _restore(self, resume: ckpt.Resumable) -> None:
        self.step.optimizer.load_state_dict(resume.optimizer)
        self.scheduler.load_state_dict(resume.scheduler)
        self.step.scaler.load_state_dict(resume.scaler)
        self.progress = resume.progress
        self.progress.partial = ckpt.restore_rank_state(resume.ranks[self.ctx.rank % len(resume.ranks)])

    # --- the loop -------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Run the remaining epochs; returns the summary also written to ``metrics.json``."""
        started = time.perf_counter()
        with ctrl_c_flag(self.run_dir is not None) as interrupted:
            while self.progress.epoch < self.config.epochs and not self.progress.stopped_early:
                row = self._train_epoch(interrupted)
                row.update(self._validate())
                self._end_epoch(row)
        summary = self.summary(time.perf_counter() - started)
        if self.run_dir is not None and self.ctx.is_main:
            write_metrics(self.run_dir, self.progress.history, summary)
        return summary

    def _train_epoch(self, interrupted: threading.Event) -> dict[str, Any]:
        epoch, first = self.progress.epoch, self.progress.step
        self.train_sampler.set_epoch(epoch, start=first * self.config.batch_size)
        loader = make_loader(self.splits.train, self.train_tf, self.train_sampler, self.config.batch_size, self.config.workers)
        self._train_mode()
        sums = self.progress.partial
        started = time.perf_counter()
        self.bar.start(f"epoch {epoch + 1}/{self.config.epochs}", self.batches_per_epoch, first)
        try:
            for index, batch in enumerate(loader, start=first):
                boundary = (index + 1) % self.config.accum_steps == 0 or index + 1 == self.batches_per_epoch
                self._accumulate(batch, sums, sync=boundary)
                if boundary:
                    self.step.optimizer_step()
                    self.scheduler.step()
                self.progress.step = index + 1
                self.bar.advance(f"loss {sums[0] / max(sums[2], 1):.4f}")
                if boundary and self.ctx.any(interrupted.is_set()):
                    self._save_interrupted()
        finally:
            self.bar.stop()
        return self._epoch_row(epoch, sums, time.perf_counter() - started)

    def _accumulate(self, batch: Batch, sums: list[float], sync: bool) -> None:
        sums[3] += len(batch.skipped)
        for path in batch.skipped:
            self.log(f"skipped unreadable file: {path}")
        if len(batch.labels):
            loss_sum, correct = self.step.forward_backward(batch.images, batch.labels, sync)
            sums[0] += loss_sum
            sums[1] += correct
            sums[2] += len(batch.labels)

    def _train_mode(self) -> None:
        self.module.train()
        for norm in self.frozen_norms:
            norm.eval()

    def _epoch_row(self, epoch: int, sums: list[float], seconds: float) -> dict[str, Any]:
        loss_sum, correct, seen, skipped = self.ctx.sum(list(sums))
        if seen == 0:
            raise DatasetError(f"No readable training images in {self.splits.train_dir} ({int(skipped)} unreadable).")
        return {"epoch": epoch + 1, "lr": self.step.optimizer.param_groups[-1]["lr"], "train_loss": loss_sum / seen,
                "train_top1": 100.0 * correct / seen, "images": int(seen), "skipped": int(skipped),
                "seconds": round(seconds, 3), "images_per_s": seen / seconds if seconds > 0 else 0.0}

    @torch.no_grad()
    def _validate(self) -> dict[str, Any]:
        """Loss and top-1 on the validation split (cross-entropy, no smoothing), reduced over ranks."""
        if not self.splits.val:
            return {"val_loss": None, "val_top1": None}
        self.module.eval()
        loader = make_loader(self.splits.val, self.eval_tf, self.val_sampler, self.config.batch_size, self.config.workers)
        loss_sum, correct, seen = 0.0, 0, 0
        for batch in loader:
            if not len(batch.labels):
                continue
            with self.step.autocast():
                logits = self.module(self.step.inputs(batch.images)).float()
            labels = batch.labels.to(self.ctx.device)
            loss_sum += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
        loss_sum, correct, seen = self.ctx.sum([loss_sum, correct, seen])
        if seen == 0:
            raise DatasetError(f"No readable validation images in {self.splits.val_source}.")
        return {"val_loss": loss_sum / seen, "val_top1": 100.0 * correct / seen}

    def _end_epoch(self, row: dict[str, Any]) -> None:
        progress = self.progress
        progress.history.append(row)
        progress.epoch, progress.step, progress.partial = row["epoch"], 0, [0.0, 0.0, 0.0, 0.0]
        value = row["val_top1"] if row["val_top1"] is not None else -row["train_loss"]
        improved = progress.best_value is None or value > progress.best_value
        if improved:
            progress.best_value, progress.best_epoch, progress.stale_epochs = value, row["epoch"], 0
        else:
            progress.stale_epochs += 1
        patience = self.config.early_stop
        progress.stopped_early = bool(patience) and progress.stale_epochs >= patience and progress.epoch < self.config.epochs
        self.log(format_row(row, self.config.epochs) + (" | best" if improved else ""))
        if progress.stopped_early:
            self.log(f"early stop: no improvement for {patience} epoch(s); best epoch {progress.best_epoch}")
        self._save(best=improved)

    # --- checkpoints ----------------------------------------------------------------------

    def _save(self, best: bool) -> None:
        ranks = self.ctx.gather(ckpt.rank_state(self.progress.partial))
        if self.run_dir is None or not self.ctx.is_main:
            return
        meta = ckpt.with_training_record(self.meta, self.config, self.progress)
        if best:
            ckpt.save_best(self.run_dir, self.module, meta)
        ckpt.save_last(self.run_dir, self.module, meta, self.config, self.progress, self.step.optimizer,
                       self.scheduler, self.step.scaler, ranks)
        write_metrics(self.run_dir, self.progress.history, self.summary())

    def _save_interrupted(self) -> None:
        self._save(best=False)
        self.ctx.barrier()
        raise TrainingInterrupted(
            f"Interrupted at epoch {self.progress.epoch + 1}, batch {self.progress.step}/{self.batches_per_epoch}. "
            f"Saved {self.run_dir / ckpt.LAST}; continue with --resume {self.run_dir}."
        )

    def summary(self, seconds: float | None = None) -> dict[str, Any]:
        history = self.progress.history
        best = next((row for row in history if row["epoch"] == self.progress.best_epoch), None)
        return {
            "task": self.config.task, "model": self.config.model, "arch": self.meta.arch, "classes": self.splits.classes,
            "train_images": len(self.splits.train), "val_images": len(self.splits.val), "val_source": self.splits.val_source,
            "epochs_run": len(history), "stopped_early": self.progress.stopped_early, "best_epoch": self.progress.best_epoch,
            "best": best, "final": history[-1] if history else None, "world_size": self.ctx.world,
            "seconds": round(seconds, 2) if seconds is not None else None,
        }
