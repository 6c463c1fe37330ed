"""resnetkit: choose, run, serve, shrink and adapt ResNet-family image classifiers.

The public names below are imported on first use (PEP 562): ``import resnetkit`` alone imports neither torch nor
the runtimes (3 s on a 2-core VM), so the console script (:mod:`resnetkit.launch`) can start ``bench``'s fork server
before that import. ``from resnetkit import load_model`` and ``resnetkit.load_model`` work as before.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it, relative to this package
_API = {
    "BenchConfig": "choose", "BenchRecord": "choose", "bench": "choose",
    "Constraints": "choose.recommend", "Recommendation": "choose.recommend", "recommend": "choose.recommend",
    "ResnetkitError": "core.errors",
    "ModelMeta": "core.spec", "ModelSpec": "core.spec", "Preprocessing": "core.spec",
    "PublishedMetrics": "core.spec", "WeightsSpec": "core.spec",
    "get_spec": "core.zoo", "list_models": "core.zoo",
    "EvalReport": "run", "evaluate": "run",
    "Classifier": "run.loading", "load_model": "run.loading",
    "ImageResult": "run.classify", "Prediction": "run.classify", "classify": "run.classify",
    "classify_images": "run.classify",
    "VideoReport": "run.video", "classify_video": "run.video", "measure_stream": "run.video",
    "Embeddings": "features", "embed_to_file": "features", "extract_features": "features",
    "find_similar": "features", "load_embeddings": "features",
    "explain": "explain",
}
__all__ = [*_API, "__version__"]

if TYPE_CHECKING:  # the names as type checkers and editors see them
    from .choose import BenchConfig, BenchRecord, bench  # noqa: F401
    from .choose.recommend import Constraints, Recommendation, recommend  # noqa: F401
    from .core.errors import ResnetkitError  # noqa: F401
    from .core.spec import ModelMeta, ModelSpec, Preprocessing, PublishedMetrics, WeightsSpec  # noqa: F401
    from .core.zoo import get_spec, list_models  # noqa: F401
    from .explain import explain  # noqa: F401
    from .features import Embeddings, embed_to_file, extract_features, find_similar, load_embeddings  # noqa: F401
    from .run import EvalReport, evaluate  # noqa: F401
    from .run.classify import ImageResult, Prediction, classify, classify_images  # noqa: F401
    from .run.loading import Classifier, load_model  # noqa: F401
    from .run.video import VideoReport, classify_video, measure_stream  # noqa: F401


class _Package(types.ModuleType):
    """This package's module type: public names load on first use. A module type rather than a module-level
    ``__getattr__`` because the import system binds a subpackage to the parent's attribute of its name when it
    first loads it: importing ``resnetkit.explain`` (the subpackage) must not replace ``resnetkit.explain``
    (the function)."""

    def __getattr__(self, name: str) -> Any:
        if name not in _API:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
        types.ModuleType.__setattr__(self, name, value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _API and isinstance(value, types.ModuleType):
            return  # the subpackage stays reachable as sys.modules["resnetkit.explain"]
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *_API})


sys.modules[__name__].__class__ = _Package
