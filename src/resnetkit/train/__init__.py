"""Training engine: fine-tuning, training from scratch and knowledge distillation on one loop.

``run(TrainConfig(...))`` starts a run, ``resume(run_dir)`` continues one, and
``finetune_module(module, meta, train_dir, epochs=...)`` trains an existing module in place.
"""

from __future__ import annotations

from .api import finetune_module, resume, run
from .config import TrainConfig, TrainingError, TrainingInterrupted

__all__ = ["TrainConfig", "TrainingError", "TrainingInterrupted", "finetune_module", "resume", "run"]
