"""The one training loop behind finetune, train, distill and ``finetune_module``.

One :class:`Trainer` runs epochs of accumulated, clipped, optionally mixed-precision steps
on a sharded loader, validates, keeps best/last checkpoints, stops early, and on Ctrl-C
saves a checkpoint that resumes at the same batch with the same random state.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..core.datasets import Batch
from ..core.errors import DatasetError
from ..core.spec import ModelMeta
from ..core.zoo import get_spec
from . import checkpoint as ckpt
from .config import TrainConfig, TrainingError, TrainingInterrupted
from .data import DataSplits, Normalize, ShardedSampler, eval_transform, make_loader, train_transform
from .distributed import Dist
from .hardware import COMPILE_NOTE, Hardware
from .optim import freeze, make_optimizer, make_scheduler, param_groups
from .reporting import EpochProgress, Log, format_row, write_metrics

Objective = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
OOM_MARKERS = ("out of memory", "can't allocate memory", "not enough memory")


class StepRunner:
    """Forward, loss, backward (scaled, accumulated) and optimizer steps (clipped) of one model.

    Each batch's loss sum and correct count stay on the device until :class:`EpochTotals` reads them, so
    the next batch is queued while the GPU computes this one. The one wait per step is the gradient
    scaler's inf/NaN check (fp16): SGD's fused CUDA kernel, which would take that check on the GPU, also
    moves the momentum on the steps the scaler skips in torch 2.11 (NaN weights after the first fp16
    overflow), so the optimizers are the plain ones.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, objective: Objective,
                 config: TrainConfig, hardware: Hardware, normalize: Normalize) -> None:
        self.model, self.optimizer, self.objective, self.config = model, optimizer, objective, config
        self.device, self.amp_dtype, self.normalize = hardware.device.torch, hardware.autocast_dtype, normalize
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=hardware.scales_gradients)

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None)

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """A uint8 batch (CPU, pinned, or already on the device) as the model's normalized input."""
        return self.normalize(images)

    def train_batch(self, images: torch.Tensor, labels: torch.Tensor, boundary: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch of training: gradients accumulated, then at an accumulation ``boundary`` the optimizer
        step. Returns (loss sum, correct predictions) as tensors on the device."""
        sums = self.forward_backward(images, labels, sync=boundary)
        if boundary:
            self.optimizer_step()
        return sums

    def forward_backward(self, images: torch.Tensor, labels: torch.Tensor, sync: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Accumulate the gradients of one batch; returns (loss sum, correct predictions) on the device."""
        images, labels = self.inputs(images), labels.to(self.device, non_blocking=True)
        no_sync = getattr(self.model, "no_sync", None)
        with contextlib.nullcontext() if sync or no_sync is None else no_sync(), out_of_memory_advice(len(labels)):
            with self.autocast():
                logits = self.model(images)
                loss = self.objective(images, logits, labels)
            self.scaler.scale(loss / self.config.accum_steps).backward()
        return loss.detach() * len(labels), (logits.detach().argmax(1) == labels).sum()

    def optimizer_step(self) -> None:
        if self.config.clip_grad:
            self.scaler.unscale_(self.optimizer)
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            nn.utils.clip_grad_norm_(params, self.config.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)


class EpochTotals:
    """Loss sum and correct predictions (on the device, read only when shown or saved), images seen and
    files skipped, of this process's part of an epoch."""

    def __init__(self, partial: list[float], device: torch.device) -> None:
        self.on_device = torch.tensor(partial[:2], dtype=torch.float64, device=device)
        self.seen, self.skipped = int(partial[2]), int(partial[3])

    def add(self, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int) -> None:
        self.on_device[0] += loss_sum.double()
        self.on_device[1] += correct.double()
        self.seen += seen

    def read(self) -> list[float]:
        """[loss sum, correct, seen, skipped] (waits for the device); a loss that is no longer finite stops the run."""
        loss_sum, correct = self.on_device.tolist()
        if not math.isfinite(loss_sum):
            raise TrainingError(f"The loss became {loss_sum}; lower --lr (or enable --clip-grad).")
        return [loss_sum, correct, float(self.seen), float(self.skipped)]

    def mean_loss(self) -> str:
        loss_sum, _, seen, _ = self.read()
        return f"loss {loss_sum / max(seen, 1):.4f}"


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
    """Trains ``module`` (in place) on ``splits`` with ``objective``; writes to ``run_dir`` if given.

    ``hardware`` (see :func:`~resnetkit.train.hardware.plan`) says how: precision, memory format, data
    workers, pinned memory, compilation; the device is ``ctx.device``.
    """

    def __init__(self, module: nn.Module, meta: ModelMeta, config: TrainConfig, splits: DataSplits,
                 objective: Objective, ctx: Dist, run_dir: Path | None, log: Log, hardware: Hardware,
                 resume: ckpt.Resumable | None = None, progress_bar: bool | None = None) -> None:
        self.meta, self.config, self.splits, self.ctx, self.run_dir, self.hardware = meta, config, splits, ctx, run_dir, hardware
        self.log = log if ctx.is_main else (lambda message: None)
        self.module = module.to(ctx.device.torch, memory_format=hardware.memory_format)
        self.frozen_norms = freeze(self.module, meta.arch, config.mode)
        optimizer = make_optimizer(param_groups(self.module, get_spec(meta.arch).head, config), config)
        normalize = Normalize(meta.preprocessing, ctx.device.torch, hardware.memory_format)
        self.step = StepRunner(ctx.wrap(self._compiled(self.module)), optimizer, objective, config, hardware, normalize)
        self.train_sampler = ShardedSampler(len(splits.train), shuffle=True, seed=config.seed, rank=ctx.rank, world=ctx.world)
        self.val_sampler = ShardedSampler(len(splits.val), shuffle=False, seed=config.seed, rank=ctx.rank, world=ctx.world, pad=False)
        self.batches_per_epoch = -(-len(self.train_sampler) // config.batch_size)
        steps_per_epoch = -(-self.batches_per_epoch // config.accum_steps)
        self.scheduler = make_scheduler(optimizer, config, steps_per_epoch)
        self.bar = EpochProgress(self.log, progress_bar if ctx.is_main else False)
        self.progress = ckpt.Progress()
        if resume is not None:
            self._restore(resume)

    def _compiled(self, module: nn.Module) -> nn.Module:
        """``module`` compiled for training with ``--compile`` (validation runs the module itself: compiling
        it in eval mode would cost a second compilation)."""
        if not self.hardware.compile:
            return module
        self.log(COMPILE_NOTE)
        return torch.compile(module)

    def _restore(self, resume: ckpt.Resumable) -> None:
        self.step.optimizer.load_state_dict(resume.optimizer)
        self.scheduler.load_state_dict(resume.scheduler)
        self.step.scaler.load_state_dict(resume.scaler)
        self.progress = resume.progress
        self.progress.partial = ckpt.restore_rank_state(resume.ranks[self.ctx.rank % len(resume.ranks)])
        if len(resume.ranks) != self.ctx.world:
            self.log(f"note: this run was saved by {len(resume.ranks)} training process(es) and goes on in "
                     f"{self.ctx.world}: not as the uninterrupted run would (each process's data order, and the "
                     f"interrupted epoch's partial sums, differ); resume with {len(resume.ranks)} for that.")

    # --- the loop -------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Run the remaining epochs; returns the summary also written to ``metrics.json``."""
        started = time.perf_counter()
        train_loader, val_loader = self._loaders()  # their workers end with this call
        with ctrl_c_flag(self.run_dir is not None) as interrupted, self.hardware.backend_flags():
            while self.progress.epoch < self.config.epochs and not self.progress.stopped_early:
                row = self._train_epoch(train_loader, interrupted)
                row.update(self._validate(val_loader))
                self._end_epoch(row)
        summary = self.summary(time.perf_counter() - started)
        if self.run_dir is not None and self.ctx.is_main:
            write_metrics(self.run_dir, self.progress.history, summary)
        return summary

    def _loaders(self) -> tuple[DataLoader, DataLoader]:
        """Training and validation loaders, made once per run (their workers live across epochs)."""
        pre, options, size = self.meta.preprocessing, self.hardware.loader_options(), self.config.batch_size
        return (make_loader(self.splits.train, train_transform(pre, self.config.augment), self.train_sampler, size, options),
                make_loader(self.splits.val, eval_transform(pre), self.val_sampler, size, options))

    def _train_epoch(self, loader: DataLoader, interrupted: threading.Event) -> dict[str, Any]:
        """One epoch (or the rest of an interrupted one); its row counts the time blocked waiting for batches."""
        epoch, first = self.progress.epoch, self.progress.step
        self.train_sampler.set_epoch(epoch, start=first * self.config.batch_size)
        self._train_mode()
        totals = EpochTotals(self.progress.partial, self.ctx.device.torch)
        waited, started = 0.0, time.perf_counter()
        self.bar.start(f"epoch {epoch + 1}/{self.config.epochs}", self.batches_per_epoch, first)
        try:
            batches = iter(loader)  # starts the workers in the first epoch: waiting for data too
            waited += time.perf_counter() - started
            for index in range(first, self.batches_per_epoch):
                before = time.perf_counter()
                batch = next(batches)
                waited += time.perf_counter() - before
                boundary = (index + 1) % self.config.accum_steps == 0 or index + 1 == self.batches_per_epoch
                self._accumulate(batch, totals, boundary)
                if boundary:
                    self.scheduler.step()
                self.progress.step = index + 1
                self.bar.advance(totals.mean_loss)
                if boundary and self.ctx.any(interrupted.is_set()):
                    self.progress.partial = totals.read()
                    self._save_interrupted()
        finally:
            self.bar.stop()
        sums = totals.read()  # waits for the device, so the clock stops when its work is done
        return self._epoch_row(epoch, sums, time.perf_counter() - started, waited)

    def _accumulate(self, batch: Batch, totals: EpochTotals, boundary: bool) -> None:
        totals.skipped += len(batch.skipped)
        for why in batch.skipped:
            self.log(f"skipped unreadable file: {why}")
        if len(batch.labels):
            totals.add(*self.step.train_batch(batch.images, batch.labels, boundary), len(batch.labels))
        elif boundary:
            self.step.optimizer_step()

    def _train_mode(self) -> None:
        self.module.train()
        for norm in self.frozen_norms:
            norm.eval()

    def _epoch_row(self, epoch: int, sums: list[float], seconds: float, waited: float) -> dict[str, Any]:
        loss_sum, correct, seen, skipped = self.ctx.sum(list(sums))
        if seen == 0:
            raise DatasetError(f"No readable training images in {self.splits.train_dir} ({int(skipped)} unreadable).")
        return {"epoch": epoch + 1, "lr": self.step.optimizer.param_groups[-1]["lr"], "train_loss": loss_sum / seen,
                "train_top1": 100.0 * correct / seen, "images": int(seen), "skipped": int(skipped),
                "seconds": round(seconds, 3), "images_per_s": seen / seconds if seconds > 0 else 0.0,
                "data_wait": round(min(1.0, waited / seconds), 4) if seconds > 0 else 0.0}

    @torch.no_grad()
    def _validate(self, loader: DataLoader) -> dict[str, Any]:
        """Loss and top-1 on the validation split (cross-entropy, no smoothing), reduced over ranks."""
        if not self.splits.val:
            return {"val_loss": None, "val_top1": None, "val_images": 0}
        self.module.eval()
        sums = torch.zeros(2, dtype=torch.float64, device=self.ctx.device.torch)
        seen = 0
        for batch in loader:
            for why in batch.skipped:
                self.log(f"validation: skipped unreadable file: {why}")
            if not len(batch.labels):
                continue
            with self.step.autocast():
                logits = self.module(self.step.inputs(batch.images)).float()
            labels = batch.labels.to(self.ctx.device.torch, non_blocking=True)
            sums[0] += nn.functional.cross_entropy(logits, labels, reduction="sum").double()
            sums[1] += (logits.argmax(1) == labels).sum().double()
            seen += len(labels)
        loss_sum, correct, seen = self.ctx.sum([*sums.tolist(), seen])
        if seen == 0:
            raise DatasetError(f"No readable validation images in {self.splits.val_source}.")
        if not math.isfinite(loss_sum):
            raise TrainingError(f"The validation loss became {loss_sum}: training diverged; lower --lr (or enable "
                                "--clip-grad).")
        return {"val_loss": loss_sum / seen, "val_top1": 100.0 * correct / seen, "val_images": int(seen)}

    def _end_epoch(self, row: dict[str, Any]) -> None:
        self._check_finite_weights(row["epoch"])
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

    def _check_finite_weights(self, epoch: int) -> None:
        """A finite loss can still leave inf or NaN weights behind (a huge --lr); they are never saved."""
        finite = torch.stack([parameter.isfinite().all() for parameter in self.module.parameters()]).all()
        if not finite.item():
            raise TrainingError(f"The weights stopped being finite numbers in epoch {epoch}: training diverged; "
                                "lower --lr (or enable --clip-grad).")

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
            "hardware": self.hardware.to_dict(), "seconds": round(seconds, 2) if seconds is not None else None,
        }
