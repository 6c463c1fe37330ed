"""Inference backends and the model-file formats they read; see :mod:`resnetkit.backends.base`.

Every module of this package registers one backend on import (discovered on first registry
use), so adding a backend is adding a module. Third-party packages add theirs through the
entry-point group ``resnetkit.backends``.
"""

from __future__ import annotations

from typing import Any

from .base import registered


def describe() -> list[dict[str, Any]]:
    """One row per registered backend (by name): availability, package version, precisions, default precision,
    files it reads, remark."""
    rows = []
    for backend in sorted(registered(), key=lambda b: b.name):
        available = backend.is_available()
        rows.append({
            "backend": backend.name,
            "available": available,
            "package": backend.package,
            "version": backend.version() if available else None,
            "precisions": list(backend.precisions),
            "default_precision": backend.default_precision() if available else None,
            "reads": sorted(s for f in backend.formats for s in f.suffixes),
            "remark": backend.description if available else backend.install_hint,
        })
    return rows
