"""The settings of one training run, stored in every checkpoint so a run can be resumed."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..core.errors import ResnetkitError

TASKS = ("finetune", "train", "distill")
MODES = ("head", "last-stage", "full")
SCHEDULES = ("cosine", "onecycle")
OPTIMIZERS = ("sgd", "adamw")
AUGMENTS = ("standard", "none")
PRECISIONS = ("fp32", "fp16", "bf16")

# Defaults that depend on how a run starts: from trained weights (fine-tuning, the default except for
# "train"), or from random weights, which need a higher learning rate, more epochs and more weight decay.
# Fine-tuning trains the last stage and the new head; training from random weights and distillation train all.
FROM_WEIGHTS = {"mode": "last-stage", "epochs": 10, "lr": 0.01, "weight_decay": 1e-4}
FROM_RANDOM = {"mode": "full", "epochs": 30, "lr": 0.1, "weight_decay": 5e-4}


class TrainingError(ResnetkitError):
    """Training cannot start or continue (bad settings, diverged loss, memory...)."""


class TrainingInterrupted(ResnetkitError):
    """Ctrl-C: a resumable checkpoint was saved."""

    exit_code = 130


@dataclass
class TrainConfig:
    """Everything that defines a run. ``None`` in ``pretrained``, ``mode``, ``epochs``, ``lr`` and
    ``weight_decay`` means the default of how the run starts (:data:`FROM_WEIGHTS` or :data:`FROM_RANDOM`),
    filled in on creation; the CLI has the same defaults."""

    task: str = "finetune"
    model: str = ""
    data_dir: str = ""
    out_dir: str | None = None
    val_dir: str | None = None
    val_split: float | None = None  # fraction held out when there is no validation folder
    mode: str | None = None  # head | last-stage | full (what trains)
    epochs: int | None = None
    lr: float | None = None  # peak learning rate of the layers that train, except a new head
    head_lr: float | None = None  # None: 10 x lr for a new head on pretrained weights, else lr (set at start)
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float | None = None
    label_smoothing: float = 0.0
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    batch_size: int = 64  # per process
    accum_steps: int = 1
    clip_grad: float | None = None  # max global gradient norm
    precision: str | None = None  # fp32 | fp16 | bf16; None: fp16 on CUDA, fp32 on CPU (see hardware.plan)
    amp: bool = False  # alias: the device's mixed precision (fp16 + GradScaler on CUDA, bf16 on CPU)
    channels_last: bool | None = None  # None: on CUDA, off on CPU
    compile: bool = False  # torch.compile the model
    augment: str = "standard"
    early_stop: int | None = None  # patience in epochs
    workers: int | None = None  # data-loading processes; None: the usable cores minus one, at least 1
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    pretrained: bool | None = None  # start from the model's weights (False: random init); None: False for "train"
    teacher: str | None = None
    temperature: float = 4.0
    alpha: float = 0.5
    # the head's classes, in order, matched to the class folders; None: the folders' own (a distillation: the
    # teacher's). A distillation's baseline gets its student's, so that the two compare on the same outputs.
    classes: list[str] | None = None

    def __post_init__(self) -> None:
        if self.pretrained is None:
            self.pretrained = self.task != "train"
        defaults = {**(FROM_WEIGHTS if self.pretrained else FROM_RANDOM), **({"mode": "full"} if self.task == "distill" else {})}
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        self._check()

    def _check(self) -> None:
        choices = {"task": TASKS, "mode": MODES, "schedule": SCHEDULES, "optimizer": OPTIMIZERS, "augment": AUGMENTS,
                   "precision": (*PRECISIONS, None)}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                words = ", ".join(a for a in allowed if a)
                raise TrainingError(f"--{name} must be one of {words}, not '{getattr(self, name)}'.")
        if self.amp and self.precision == "fp32":
            raise TrainingError("--amp asks for mixed precision and --precision fp32 for none; pass one of them.")
        if self.workers is not None and self.workers < 0:
            raise TrainingError(f"--workers must be 0 or more, got {self.workers}.")
        positive = {"epochs": self.epochs, "lr": self.lr, "batch-size": self.batch_size, "accum-steps": self.accum_steps,
                    "temperature": self.temperature}
        for name, value in positive.items():
            if value <= 0:
                raise TrainingError(f"--{name} must be positive, got {value}.")
        optional_positive = {"head-lr": self.head_lr, "clip-grad": self.clip_grad}
        for name, value in optional_positive.items():
            if value is not None and value <= 0:
                raise TrainingError(f"--{name} must be positive, got {value}.")
        for name, value in {"weight-decay": self.weight_decay, "warmup-epochs": self.warmup_epochs}.items():
            if value < 0:
                raise TrainingError(f"--{name} must be 0 or more, got {value}.")
        if not 0 <= self.label_smoothing < 1:
            raise TrainingError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}.")
        if self.val_split is not None and not 0 <= self.val_split < 1:
            raise TrainingError(f"--val-split must be in [0, 1), got {self.val_split}.")
        if not 0 <= self.alpha <= 1:
            raise TrainingError(f"--alpha must be in [0, 1], got {self.alpha}.")
        if self.task == "distill" and not self.teacher:
            raise TrainingError("distill needs a --teacher model.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)
