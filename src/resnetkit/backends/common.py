"""Helpers shared by the backends: artifact metadata, calibration input, quiet third-party tools."""

from __future__ import annotations

import contextlib
import io
import json
import sys
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Sequence

import torch

from ..core.spec import ModelMeta
from .base import RunnerOptions

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
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads in PyTorch, then restore the previous setting."""
    previous = torch.get_num_threads()
    if threads is None or threads == previous:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def quiet_torch_jit() -> Iterator[None]:
    """Silence only PyTorch's deprecation notices for ``torch.jit``: TorchScript files are made and read
    with it on purpose (for LibTorch users), so the notice is not actionable for resnetkit's users."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r"`torch\.jit\.")
        yield


@contextlib.contextmanager
def captured_stdout() -> Iterator[None]:
    """Keep what a tool prints to stdout (ONNX Runtime's calibrator prints its statistics) out of the
    output; it is shown on stderr only if the block fails, for diagnosis."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    except BaseException:
        sys.stderr.write(buffer.getvalue())
        raise


@contextlib.contextmanager
def progress_to_stderr() -> Iterator[None]:
    """Send the chatter quantization tools print to stdout to stderr (stdout may be JSON)."""
    with contextlib.redirect_stdout(sys.stderr):
        yield
