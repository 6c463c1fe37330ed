"""Run a model: classify images and evaluate accuracy on a labelled folder."""

from __future__ import annotations

from .classify import ImageResult, Prediction, classify
from .evaluate import EvalReport, evaluate

__all__ = ["EvalReport", "ImageResult", "Prediction", "classify", "evaluate"]
