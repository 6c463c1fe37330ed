"""resnetkit: choose, run, serve, shrink and adapt ResNet-family image classifiers."""

from __future__ import annotations

from . import backends as _backends  # noqa: F401  (the backend registry)
from .choose import BenchConfig, BenchRecord, bench
from .core.errors import ResnetkitError
from .run import EvalReport, evaluate
from .run.loading import Classifier, load_model
from .run.classify import ImageResult, Prediction, classify
from .run.video import VideoReport, classify_video, measure_stream
from .choose.recommend import Constraints, Recommendation, recommend
from .core.spec import ModelMeta, ModelSpec, Preprocessing, PublishedMetrics, WeightsSpec
from .core.zoo import get_spec, list_models
from .features import Embeddings, embed_to_file, extract_features, find_similar, load_embeddings
from .explain import explain

__version__ = "0.1.0"

__all__ = [
    "BenchConfig", "BenchRecord", "Classifier", "Constraints", "EvalReport", "ImageResult", "ModelMeta", "ModelSpec",
    "Prediction", "Preprocessing", "PublishedMetrics", "Recommendation", "ResnetkitError", "WeightsSpec",
    "VideoReport", "classify_video", "measure_stream",
    "bench", "classify", "evaluate", "get_spec", "list_models", "load_model", "recommend", "__version__",
]
__all__ += ["Embeddings", "embed_to_file", "explain", "extract_features", "find_similar", "load_embeddings"]
