"""What trains and how fast: freezing by mode, per-group learning rates, warm-up + cosine schedules."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..core.zoo import get_spec
from .config import TrainConfig, TrainingError


def trainable_prefixes(arch: str, mode: str) -> tuple[str, ...] | None:
    """Dotted module paths that train in ``mode``; ``None`` means everything trains."""
    spec = get_spec(arch)
    return {"head": (spec.head,), "last-stage": (spec.last_stage, spec.head), "full": None}[mode]


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def freeze(module: nn.Module, arch: str, mode: str) -> list[nn.Module]:
    """Set ``requires_grad`` by mode; return the frozen BatchNorm layers (they stay in eval mode)."""
    prefixes = trainable_prefixes(arch, mode)
    if prefixes is None:
        module.requires_grad_(True)
        return []
    for name, param in module.named_parameters():
        param.requires_grad_(_under(name, prefixes))
    return [m for name, m in module.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not _under(name, prefixes)]


def param_groups(module: nn.Module, head: str, config: TrainConfig) -> list[dict]:
    """Two groups: trainable backbone parameters at ``lr``, head parameters at the head learning rate.

    Weight decay applies to weights, not to biases and normalization parameters.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in module.named_parameters():
        if param.requires_grad:
            groups.setdefault((_under(name, (head,)), param.ndim > 1), []).append(param)
    if not groups:
        raise TrainingError("No parameter is trainable in this mode.")
    return [
        {"params": params, "lr": (config.head_lr or config.lr) if is_head else config.lr,
         "weight_decay": config.weight_decay if decays else 0.0, "name": ("head" if is_head else "backbone")}
        for (is_head, decays), params in sorted(groups.items())
    ]


def make_optimizer(groups: list[dict], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups)
    return torch.optim.SGD(groups, momentum=config.momentum, nesterov=config.momentum > 0)


# schedule -> (default warm-up fraction of all steps, start factor, final factor) of "warm up, then cosine down"
SCHEDULE_SHAPES = {"cosine": (0.0, 0.0, 0.0), "onecycle": (0.3, 1 / 25, 1 / 1e4)}


def lr_factor(step: int, total: int, warmup: int, start: float, final: float) -> float:
    """Linear warm-up from ``start`` to 1 over ``warmup`` steps, then cosine from 1 to ``final``."""
    if step < warmup:
        return start + (1 - start) * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-optimizer-step schedule: ``cosine`` (optional ``--warmup-epochs``) or ``onecycle`` (30 % warm-up)."""
    default_fraction, start, final = SCHEDULE_SHAPES[config.schedule]
    total = steps_per_epoch * config.epochs
    warmup = round(config.warmup_epochs * steps_per_epoch) if config.warmup_epochs else round(default_fraction * total)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup, start, final))
