"""Offline labelling at volume: ``resnetkit predict`` (inputs -> decode pool -> batched runner -> part files)."""

from .engine import PredictSummary, predict
from .inputs import resolve_inputs
from .output import PartStore

__all__ = ["PartStore", "PredictSummary", "predict", "resolve_inputs"]
