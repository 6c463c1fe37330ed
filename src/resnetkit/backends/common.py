"""Helpers shared by the backends: artifact metadata, precision checks, calibration input."""

from __future__ import annotations

import contextlib
import json
import sys
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Sequence

import torch

from ..core.errors import BackendUnavailableError
from .base import RunnerOptions
from ..core.spec import ModelMeta

META_KEY = "resnetkit"  # key under which artifacts store ModelMeta.to_dict() as JSON
GENERATED_CALIBRATION_IMAGES = 32


def meta_to_json(meta: ModelMeta) -> str:
    return json.dumps(meta.to_dict(), sort_keys=True)


def meta_from_json(text: str, path: Path) -> ModelMeta:
    from ..core.errors import UnknownModelError

    try:
        return ModelMeta.from_dict(json.loads(text))
    except (ValueError, KeyError, TypeError) as exc:
        raise UnknownModelError(f"{path}: the resnetkit metadata is unreadable ({exc}).") from None


def check_file_backend(path: Path, backend: str | None, allowed: Sequence[str], kind: str) -> None:
    """Refuse a backend that cannot run this kind of file (``None``: the file's own runtime)."""
    if backend is not None and backend not in allowed:
        raise BackendUnavailableError(
            f"{path.name} is {kind}; the {backend} backend cannot run it. Use --backend {' or '.join(allowed)}, "
            "or leave --backend out to run it with its own runtime."
        )


def check_file_precision(path: Path, requested: str | None, stored: str) -> None:
    """Refuse a precision other than the one a file computes in as stored."""
    if requested is not None and requested != stored:
        raise BackendUnavailableError(
            f"{path.name} computes in {stored} as stored, not {requested}. Make a {requested} model with "
            "'resnetkit quantize' (fp16/bf16 also run from OpenVINO files with --backend openvino)."
        )


def check_precision(backend: str, precision: str, supported: Sequence[str]) -> None:
    if precision not in supported:
        raise BackendUnavailableError(
            f"The {backend} backend runs {', '.join(supported)}, not '{precision}'. "
            "See 'resnetkit backends' and 'resnetkit quantize'."
        )


def calibration_batches(meta: ModelMeta, options: RunnerOptions) -> Sequence[torch.Tensor]:
    """The caller's calibration batches, or generated images (good for timing, not accuracy)."""
    if options.calibration:
        return options.calibration
    from ..shrink.compare import generated_batches

    warnings.warn(
        f"int8 without calibration data: calibrating {meta.name} on {GENERATED_CALIBRATION_IMAGES} generated images. "
        "Speed is representative, accuracy is not; use 'resnetkit quantize --calib DIR' for a usable model.",
        stacklevel=3,
    )
    return generated_batches(meta, count=GENERATED_CALIBRATION_IMAGES, batch_size=8)


@lru_cache(maxsize=1)
def cpu_has_vnni() -> bool:
    """True if the CPU has int8 dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


@contextlib.contextmanager
def progress_to_stderr() -> Iterator[None]:
    """Send the chatter quantization tools print to stdout to stderr (stdout may be JSON)."""
    with contextlib.redirect_stdout(sys.stderr):
        yield
