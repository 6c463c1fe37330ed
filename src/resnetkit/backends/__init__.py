"""Extra inference backends and artifact formats; importing this package registers them.

Each module registers its backend with :func:`resnetkit.backends.base.register_backend` and,
where it reads files, an artifact loader with :func:`resnetkit.core.loading.register_artifact_loader`.
``auto`` is imported last because it measures the others.
"""

from __future__ import annotations

import importlib.metadata  # noqa: E402
from typing import Any  # noqa: E402

from ..core.errors import BackendUnavailableError  # noqa: E402
from .base import backend_names, get_backend, load_backend_modules  # noqa: E402

# backend -> (package whose version is shown, precisions it runs, remark)
_ABOUT = {
    "eager": ("torch", "fp32, fp16, bf16", "PyTorch eager, inference mode"),
    "compile": ("torch", "fp32, bf16", "torch.compile (inductor, frozen weights); compiles on first call (tens of s)"),
    "onnxruntime": ("onnxruntime", "fp32, int8", "ONNX Runtime CPU; int8 = static QDQ; reads .onnx"),
    "openvino": ("openvino", "fp32, bf16, fp16, int8", "OpenVINO CPU; int8 = NNCF; reads .onnx and .xml"),
    "auto": ("", "as chosen", "measures openvino, onnxruntime, eager for the model and batch size; runs the fastest"),
}


def describe() -> list[dict[str, Any]]:
    """One row per registered backend: availability, package version, precisions, remark."""
    rows = []
    for name in backend_names():
        package, precisions, remark = _ABOUT.get(name, ("", "", ""))
        try:
            get_backend(name)
            available = True
        except BackendUnavailableError as exc:
            available, remark = False, str(exc)
        if name == "openvino" and available:
            from . import openvino

            remark += f"; default precision on this CPU: {openvino.default_precision()}"
        rows.append({"backend": name, "available": available, "version": _version(package) if available else None,
                     "precisions": precisions, "remark": remark})
    return rows


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package) if package else None
    except importlib.metadata.PackageNotFoundError:
        return None
