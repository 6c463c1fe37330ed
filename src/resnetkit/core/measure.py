"""Measuring primitives: parameter and MAC counts, serialized size, timing with statistics.

Library functions that return numbers; the CLI and benchmarks format them.
"""

from __future__ import annotations

import io
import re
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_macs(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass at ``input_shape`` (batch 1), counted by
    ``torch.utils.flop_counter`` (which counts matmul/conv FLOPs = 2 x MACs)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        module.eval()(torch.zeros(1, *input_shape))
    return counter.get_total_flops() // 2


def serialized_size_bytes(module: nn.Module, dtype: torch.dtype | None = None) -> int:
    """Bytes of ``torch.save(state_dict)``; floating tensors cast to ``dtype`` if given."""
    state = module.state_dict()
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.tell()


_PROC_STATUS = Path("/proc/self/status")
_PROC_CLEAR_REFS = Path("/proc/self/clear_refs")


def _proc_status_mb(field: str) -> float | None:
    """A ``kB`` line of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in MB; None off Linux."""
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", _PROC_STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) * 1024 / 1e6 if match else None


def reset_peak_rss() -> float | None:
    """Lower the kernel's peak-RSS mark to the current RSS and return that RSS in MB.

    Linux (>= 4.0) resets the mark when a process writes ``5`` to its own ``clear_refs``;
    elsewhere nothing is reset and None is returned, so the peak read later includes
    everything the process did before (imports included).
    """
    try:
        _PROC_CLEAR_REFS.write_text("5")
    except OSError:
        return None
    return _proc_status_mb("VmRSS")


def peak_rss_mb() -> float:
    """The process's peak resident memory in MB (since the last :func:`reset_peak_rss`)."""
    peak = _proc_status_mb("VmHWM")
    if peak is not None:
        return peak
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, KiB elsewhere
    return max_rss / 1e6 if sys.platform == "darwin" else max_rss * 1024 / 1e6


@dataclass(frozen=True)
class Timing:
    """Wall-clock statistics of repeated calls, in milliseconds."""

    p50_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    runs: int
    warmup: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def time_calls(
    fn: Callable[[], object],
    *,
    warmup: int = 5,
    min_runs: int = 20,
    max_runs: int = 500,
    min_seconds: float = 2.0,
) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then at least ``min_runs`` times and until
    ``min_seconds`` have passed (capped at ``max_runs``); percentiles over the timed calls."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < max_runs and (len(samples) < min_runs or time.perf_counter() - start < min_seconds):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000.0)
    return timing_from_samples(samples, warmup)


def timing_from_samples(samples_ms: list[float], warmup: int = 0) -> Timing:
    ordered = sorted(samples_ms)
    return Timing(
        p50_ms=statistics.median(ordered),
        p90_ms=percentile(ordered, 90),
        mean_ms=statistics.fmean(ordered),
        min_ms=ordered[0],
        runs=len(ordered),
        warmup=warmup,
    )


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile of an already sorted list (numpy's default method)."""
    if not sorted_values:
        raise ValueError("no values")
    position = (len(sorted_values) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)
