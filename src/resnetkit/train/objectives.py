"""Training losses. Fine-tuning, training and distillation differ only here."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CrossEntropyObjective:
    """Cross-entropy with optional label smoothing."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = label_smoothing

    def __call__(self, images: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)


class DistillationObjective(CrossEntropyObjective):
    """``alpha * KL(student/T || teacher/T) * T^2 + (1 - alpha) * CE``; the teacher sees the same augmented batch."""

    def __init__(self, teacher: nn.Module, temperature: float, alpha: float, label_smoothing: float = 0.0) -> None:
        super().__init__(label_smoothing)
        self.teacher = teacher.eval().requires_grad_(False)
        self.temperature = temperature
        self.alpha = alpha

    def __call__(self, images: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(images).float()
        t = self.temperature
        soft = F.kl_div(F.log_softmax(logits.float() / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                        reduction="batchmean", log_target=True) * t * t
        return self.alpha * soft + (1 - self.alpha) * super().__call__(images, logits, labels)
