"""Inference backends and the model-file formats they read; see :mod:`resnetkit.backends.base`.

Every module of this package registers one backend on import (discovered on first registry
use), so adding a backend is adding a module. Third-party packages add theirs through the
entry-point group ``resnetkit.backends``.
"""

from __future__ import annotations

from typing import Any

from ..core.device import Device, resolve_device
from .base import registered


def describe(device: Device | None = None) -> list[dict[str, Any]]:
    """One row per registered backend (by name): availability, package version, devices, precisions, default
    precision on ``device`` (default: ``--device auto``'s; None where it does not run there), files it reads, files
    it writes (``export`` formats, and ``quantize`` methods with whether it is the method's default), remark."""
    device = device or resolve_device("auto")
    rows = []
    for backend in sorted(registered(), key=lambda b: b.name):
        available = backend.is_available()
        runs_here = available and device.kind in backend.devices
        rows.append({
            "backend": backend.name,
            "available": available,
            "package": backend.package,
            "version": backend.version() if available else None,
            "devices": list(backend.devices),
            "precisions": list(backend.precisions),
            "default_precision": backend.default_precision(device) if runs_here else None,
            "reads": sorted(s for f in backend.formats for s in f.suffixes),
            "exports": [{"format": f.export.name, "suffix": f.suffixes[0]} for f in backend.formats if f.export],
            "quantizes": [{"method": q.method, "suffix": q.suffix, "default": q.default} for q in backend.quantizers],
            "remark": backend.description if available else backend.install_hint,
        })
    return rows
