"""resnetkit: choose, run, serve, shrink and adapt ResNet-family image classifiers."""

from __future__ import annotations

from . import artifacts as _artifacts  # noqa: F401  (registers the .pt artifact loader)
from .errors import ResnetkitError
from .models import Classifier, load_model
from .spec import ModelMeta, ModelSpec, Preprocessing, PublishedMetrics, WeightsSpec
from .zoo import get_spec, list_models

__version__ = "0.1.0"

__all__ = [
    "Classifier", "ModelMeta", "ModelSpec", "Preprocessing", "PublishedMetrics", "ResnetkitError", "WeightsSpec",
    "get_spec", "list_models", "load_model", "__version__",
]
