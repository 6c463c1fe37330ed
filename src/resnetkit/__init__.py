"""resnetkit: choose, run, serve, shrink and adapt ResNet-family image classifiers."""

from __future__ import annotations

from . import artifacts as _artifacts  # noqa: F401  (registers the .pt artifact loader)
from . import backends as _backends  # noqa: F401  (registers onnxruntime, openvino, compile, auto and their file loaders)
from .bench import BenchConfig, BenchRecord, bench
from .errors import ResnetkitError
from .evaluate import EvalReport, evaluate
from .models import Classifier, load_model
from .predict import ImageResult, Prediction, classify
from .recommend import Constraints, Recommendation, recommend
from .spec import ModelMeta, ModelSpec, Preprocessing, PublishedMetrics, WeightsSpec
from .zoo import get_spec, list_models

__version__ = "0.1.0"

__all__ = [
    "BenchConfig", "BenchRecord", "Classifier", "Constraints", "EvalReport", "ImageResult", "ModelMeta", "ModelSpec",
    "Prediction", "Preprocessing", "PublishedMetrics", "Recommendation", "ResnetkitError", "WeightsSpec",
    "bench", "classify", "evaluate", "get_spec", "list_models", "load_model", "recommend", "__version__",
]
