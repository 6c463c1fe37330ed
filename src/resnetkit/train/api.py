"""Entry points: start or resume a run from a :class:`TrainConfig`, and ``finetune_module``."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ..core.artifacts import build_from_artifact
from ..core.device import resolve_device
from ..core.fileio import write_text_atomic
from ..run.loading import Classifier, load_model
from ..core.spec import ModelMeta, PublishedMetrics
from ..core.zoo import get_spec, is_zoo_name
from . import checkpoint as ckpt
from . import distributed
from .config import TrainConfig, TrainingError, TrainingInterrupted
from .data import DataSplits, load_splits, rare_format_files
from .distributed import Dist
from .engine import Objective, Trainer
from .hardware import Hardware, processes_on_this_machine
from .hardware import plan as hardware_plan
from .objectives import CrossEntropyObjective, DistillationObjective
from .reporting import METRICS_JSON, Log, stderr_log

CONFIG = "config.json"  # the run's settings, readable while it trains (checkpoints carry them too)


def run(config: TrainConfig, *, log: Log = stderr_log, progress_bar: bool | None = None) -> dict[str, Any]:
    """Start a run: finetune (new head), train (random init) or distill; returns the summary."""
    ctx = distributed.setup(config.device)
    try:
        with _removed_if_unfinished(config.out_dir, ctx):
            return new_trainer(config, ctx, log=log, progress_bar=progress_bar).fit()
    finally:
        distributed.teardown(ctx)


@contextlib.contextmanager
def _removed_if_unfinished(out_dir: str | None, ctx: Dist) -> Iterator[None]:
    """A run that fails before its first checkpoint leaves nothing behind: its ``config.json``, and its
    folder if the run made it. Once ``last.pt`` exists the folder is a resumable run and stays."""
    run_dir = Path(out_dir) if out_dir else None
    existed = run_dir is None or run_dir.exists()
    try:
        yield
    except TrainingInterrupted:
        raise
    except BaseException:
        if run_dir is not None and ctx.is_main and run_dir.is_dir() and not (run_dir / ckpt.LAST).exists():
            (run_dir / CONFIG).unlink(missing_ok=True)
            if not existed and not any(run_dir.iterdir()):
                run_dir.rmdir()
        raise


def new_trainer(config: TrainConfig, ctx: Dist, *, log: Log = stderr_log, progress_bar: bool | None = None) -> Trainer:
    """The :class:`Trainer` of a new run in ``config.out_dir`` (its ``config.json`` written), ready to ``fit()``."""
    run_dir = _new_run_folder(config)
    config = _absolute_paths(config)
    hardware = hardware_plan(config, ctx.device, processes_on_this_machine())
    teacher = _load_teacher(config)
    splits = load_splits(config.data_dir, config.val_dir, config.val_split, config.seed,
                         teacher.meta.categories if teacher else config.classes)
    _check_outside_class_folders(run_dir, splits)
    torch.manual_seed(config.seed)
    module, meta, new_head = initial_model(config.model, splits.classes, config.pretrained, run_dir)
    if config.head_lr is None:  # a new head on pretrained features learns faster than the features
        config = config.replace(head_lr=10 * config.lr if new_head and config.pretrained else config.lr)
    if teacher:
        check_same_input(teacher.meta, meta.replace(name=config.model))
    if ctx.is_main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(run_dir / CONFIG, json.dumps(config.to_dict(), indent=2) + "\n")
        except OSError as exc:
            raise TrainingError(f"Cannot write the run folder {run_dir}: {exc.strerror or exc}. Pick another -o.") from None
    _announce(config, splits, meta, ctx, hardware, log)
    return Trainer(module, meta, config, splits, _objective(config, teacher, hardware), ctx, run_dir, log, hardware,
                   progress_bar=progress_bar)


def _new_run_folder(config: TrainConfig) -> Path:
    """``config.out_dir``, checked before anything is loaded: not a file, and not a run already."""
    if not config.out_dir:
        raise TrainingError("A run needs an output folder (-o RUN_DIR).")
    run_dir = Path(config.out_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise TrainingError(f"-o {run_dir} is a file, not a folder; pick a folder for the run.")
    if (run_dir / ckpt.LAST).exists():
        raise TrainingError(f"{run_dir} already holds a run. Continue it with --resume {run_dir}, or pick another -o.")
    earlier = [name for name in (ckpt.BEST, METRICS_JSON) if (run_dir / name).exists()]  # finished work
    if earlier:
        raise TrainingError(f"{run_dir} holds files of an earlier run ({', '.join(earlier)}) that this run would "
                            "overwrite; pick another -o, or move them away.")
    return run_dir


def _absolute_paths(config: TrainConfig) -> TrainConfig:
    """``config`` with the folders and model files it names made absolute, so that the run resumes from any
    working directory (zoo names stay as they are)."""
    def absolute(ref: str | None) -> str | None:
        return str(Path(ref).resolve()) if ref and not is_zoo_name(ref) and Path(ref).exists() else ref

    return config.replace(data_dir=absolute(config.data_dir), val_dir=absolute(config.val_dir),
                          model=absolute(config.model), teacher=absolute(config.teacher))


def _check_outside_class_folders(run_dir: Path, splits: DataSplits) -> None:
    """Refuse a run folder among the class folders of the data: its checkpoints and plots would become images of a
    class (or a class of their own) in the next run on that data. Beside ``train/`` and ``val/`` it is fine."""
    for folder in (splits.train_dir, splits.val_source):
        if Path(folder).is_dir() and Path(folder).resolve() in (run_dir.resolve(), *run_dir.resolve().parents):
            raise TrainingError(f"-o {run_dir} is inside {folder}, whose sub-folders are the classes: the run's files "
                                "would become images of a class; pick a folder outside it.")


def resume(run_dir: str | os.PathLike[str], *, epochs: int | None = None, workers: int | None = None,
           log: Log = stderr_log, progress_bar: bool | None = None) -> dict[str, Any]:
    """Continue the run saved in ``run_dir`` exactly where it stopped (optionally for more ``epochs``, with other
    data-loading ``workers``, which do not change what is trained)."""
    state = ckpt.load_resumable(run_dir)
    if epochs is not None and epochs < state.progress.epoch:
        raise TrainingError(f"{run_dir} has already trained {state.progress.epoch} epochs; --epochs {epochs} cannot "
                            f"shorten it: give more than {state.progress.epoch} to extend it, or none to finish it.")
    changes = {name: value for name, value in (("epochs", epochs), ("workers", workers)) if value is not None}
    config = state.config.replace(out_dir=str(run_dir), **changes)
    ctx = distributed.setup(config.device)
    try:
        hardware = hardware_plan(config, ctx.device, processes_on_this_machine())
        teacher = _load_teacher(config)
        splits = load_splits(config.data_dir, config.val_dir, config.val_split, config.seed, state.meta.categories)
        module = build_from_artifact(state.meta, state.model_state)
        where = f", inside epoch {state.progress.epoch + 1} after batch {state.progress.step}" if state.progress.step else ""
        if ctx.is_main:
            log(f"resuming {run_dir}: {state.progress.epoch} of {config.epochs} epochs done{where}; {hardware.describe()}")
        trainer = Trainer(module, state.meta, config, splits, _objective(config, teacher, hardware), ctx, Path(run_dir),
                          log, hardware, resume=state, progress_bar=progress_bar)
        return trainer.fit()
    finally:
        distributed.teardown(ctx)


def finetune_module(module: nn.Module, meta: ModelMeta, train_dir: str | Path, *, epochs: int, lr: float = 0.01,
                    batch_size: int = 64, val_dir: str | Path | None = None, workers: int | None = None,
                    seed: int = 0) -> dict:
    """Train all parameters of ``module`` in place (no new head) on folders named like ``meta.categories``,
    on the device it is on, with that device's defaults (precision, memory format; ``workers`` None: the
    usable cores minus one).

    Uses the model's augmentation and preprocessing; writes nothing. Returns the last epoch's
    metrics (``train_loss``, ``train_top1``, ``val_loss``, ``val_top1`` (None without ``val_dir``), ...).
    """
    config = TrainConfig(task="finetune", model=meta.name, data_dir=str(train_dir), val_dir=str(val_dir) if val_dir else None,
                         val_split=None if val_dir else 0.0, mode="full", epochs=epochs, lr=lr, head_lr=lr,
                         batch_size=batch_size, workers=workers, seed=seed)
    splits = load_splits(config.data_dir, config.val_dir, config.val_split, seed, meta.categories)
    torch.manual_seed(seed)
    device = resolve_device(str(next(module.parameters()).device))
    hardware = hardware_plan(config, device)
    summary = Trainer(module, meta, config, splits, CrossEntropyObjective(), Dist(device=device), None, stderr_log,
                      hardware).fit()
    module.eval()
    return summary["final"]


def initial_model(ref: str, classes: list[str], pretrained: bool, run_dir: Path) -> tuple[nn.Module, ModelMeta, bool]:
    """The starting module, its metadata, and whether its head is new: loaded weights with a head
    for ``classes`` (kept if the model already has exactly these classes), or random init."""
    new_head = True
    if pretrained:
        classifier = load_model(ref)
        module, meta = classifier.torch_module("training"), classifier.meta
        new_head = list(meta.categories) != list(classes)
        if new_head:
            replace_head(module, get_spec(meta.arch).head, len(classes))
    else:
        arch = ref if is_zoo_name(ref) else load_model(ref).meta.arch
        module, meta = get_spec(arch).build(len(classes)), get_spec(arch).meta()
    meta = meta.replace(name=run_dir.resolve().name, categories=tuple(classes), metrics=PublishedMetrics(),
                        weights=str(run_dir / ckpt.BEST), extra={})
    return module, meta, new_head


def replace_head(module: nn.Module, head: str, num_classes: int) -> None:
    """A new, randomly initialised classifier layer for ``num_classes``."""
    old = module.get_submodule(head)
    if not isinstance(old, nn.Linear):
        raise TrainingError(f"The classifier '{head}' is a {type(old).__name__}, not a Linear layer.")
    module.set_submodule(head, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))


def _load_teacher(config: TrainConfig) -> Classifier | None:
    """The teacher, whose PyTorch module runs beside the student (an exported file is refused, saying so)."""
    if config.task != "distill" or not config.teacher:
        return None
    teacher = load_model(config.teacher)
    teacher.torch_module("distill")
    return teacher


def check_same_input(teacher: ModelMeta, student: ModelMeta) -> None:
    """The teacher sees the student's batches, so both need the same input size and normalization."""
    t, s = teacher.preprocessing, student.preprocessing
    if (t.crop_size, t.mean, t.std) != (s.crop_size, s.mean, s.std):
        raise TrainingError(f"Teacher {teacher.name} expects {t.describe()} but student {student.name} expects "
                            f"{s.describe()}; pick a teacher and a student with the same input size and normalization.")


def _objective(config: TrainConfig, teacher: Classifier | None, hardware: Hardware) -> Objective:
    if teacher is None:
        return CrossEntropyObjective(config.label_smoothing)
    module = teacher.torch_module("distill").to(hardware.device.torch, memory_format=hardware.memory_format)
    return DistillationObjective(module, config.temperature, config.alpha, config.label_smoothing)


def _announce(config: TrainConfig, splits: DataSplits, meta: ModelMeta, ctx: Dist, hardware: Hardware, log: Log) -> None:
    if not ctx.is_main:
        return
    log(f"{config.task} {config.model} -> {config.out_dir}: {len(splits.classes)} classes, "
        f"{len(splits.train)} train images ({splits.train_dir}), {len(splits.val)} val images ({splits.val_source}), "
        f"input {meta.preprocessing.crop_size}px, mode {config.mode}, batch {config.batch_size}; {hardware.describe()}"
        + (f", {ctx.world} processes" if ctx.enabled else ""))
    trained = {s.label for s in splits.train}
    unchecked = [splits.classes[label] for label in sorted(trained - {s.label for s in splits.val})]
    if splits.val and unchecked:
        log(f"note: no validation image of {', '.join(unchecked)} (a class with a single image keeps it for "
            "training): the validation accuracy does not cover it")
    for path in rare_format_files(splits.train + splits.val):
        log(f"note: {path} has a format that is rare in its class folder; it decodes and is used, but check it is "
            "a real example (placeholders and icons often look like this)")
