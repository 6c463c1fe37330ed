"""What bench measures only on a GPU: the memory torch allocates there, and the batch size with the most
images per second (doubling from the throughput batch until the gain is small or the GPU is full)."""

from __future__ import annotations

import gc
from typing import Callable

import torch

from ..core.device import Device

BEST_BATCH_LIMIT = 1024  # the largest batch tried
BEST_BATCH_GAIN = 0.05  # doubling stops once images per second rise by this fraction or less


def reset_gpu_peak(device: Device) -> None:
    """Start counting the peak of GPU memory from what is allocated now, after collecting garbage (auto's
    candidates that lost); nothing on the CPU."""
    if device.is_cuda:
        gc.collect()
        torch.cuda.reset_peak_memory_stats(device.torch)


def gpu_peak_mb(device: Device) -> float | None:
    """The most GPU memory torch allocated since :func:`reset_gpu_peak`, in MB (None on the CPU)."""
    return torch.cuda.max_memory_allocated(device.torch) / 1e6 if device.is_cuda else None


def best_batch(images_per_second: Callable[[int], float], start: int, *, limit: int = BEST_BATCH_LIMIT,
               gain: float = BEST_BATCH_GAIN,
               free_memory: Callable[[], None] = torch.cuda.empty_cache) -> tuple[int, float]:
    """The batch size with the most images per second, and that rate: ``start``, then doubling (up to
    ``limit``) while each doubling raises the rate by more than ``gain``. A batch that does not fit
    (``torch.cuda.OutOfMemoryError``) ends the search: the cache is emptied and the last size that fit kept."""
    best_size, best_rate = start, images_per_second(start)
    previous, size = best_rate, start * 2
    while size <= limit:
        try:
            rate = images_per_second(size)
        except torch.cuda.OutOfMemoryError:
            free_memory()
            break
        if rate > best_rate:
            best_size, best_rate = size, rate
        if rate <= previous * (1 + gain):
            break
        previous, size = rate, size * 2
    return best_size, best_rate
