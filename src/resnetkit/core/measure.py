"""Measuring primitives: parameter and MAC counts, serialized size, timing with statistics.

Library functions that return numbers; the CLI and benchmarks format them.
"""

from __future__ import annotations

import math
import os
import re
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .device import machine_cores


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_macs(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass at ``input_shape`` (batch 1), counted by
    ``torch.utils.flop_counter`` (which counts matmul/conv FLOPs = 2 x MACs).

    The pass runs on fp32 meta tensors standing in for the weights (shapes only, nothing computed): with
    real tensors the counter's convolutions took 1.7-2.1 s for resnet50 here, on meta 0.08 s. A module
    whose forward needs real values (data-dependent control flow) is counted on its own weights."""
    module.eval()
    try:
        return _count_macs(module, torch.zeros(1, *input_shape, device="meta"), _meta_stand_ins(module))
    except (NotImplementedError, RuntimeError):
        return _count_macs(module, torch.zeros(1, *input_shape, dtype=_float_dtype(module)), None)


def _count_macs(module: nn.Module, example: torch.Tensor, tensors: dict[str, torch.Tensor] | None) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        if tensors is None:
            module(example)
        else:
            torch.func.functional_call(module, tensors, (example,))
    return counter.get_total_flops() // 2


def _meta_stand_ins(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``module`` as a meta tensor of its shape (floating ones in fp32)."""
    named = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    return {name: torch.empty(t.shape, dtype=torch.float32 if t.is_floating_point() else t.dtype, device="meta")
            for name, t in named.items()}


def _float_dtype(module: nn.Module) -> torch.dtype:
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)


def serialized_size_bytes(module: nn.Module, dtype: torch.dtype | None = None) -> int:
    """Bytes of ``torch.save(state_dict)``; floating tensors cast to ``dtype`` if given."""
    state = module.state_dict()
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    counter = _ByteCounter()
    torch.save(state, counter)
    return counter.written


class _ByteCounter:
    """A write-only file that keeps only the count of bytes written to it (torch's zip writer only writes and
    flushes): the size of a ``torch.save`` without a copy of the state dict in memory (resnet152's fp32 size took
    0.07 s against 0.2 s into a BytesIO)."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes | memoryview) -> int:
        size = memoryview(data).nbytes
        self.written += size
        return size

    def flush(self) -> None:
        pass


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
    p25_ms: float = math.nan
    p75_ms: float = math.nan
    p50_ci_ms: tuple[float, float] = (math.nan, math.nan)  # 95 % confidence interval of the median

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


Sync = Callable[[], None] | None  # an accelerator's synchronize (Device.synchronize); None on the CPU


# Interleaved timings wait this long before each burst: runtimes' worker threads spin on after a call returns and
# take the cores from the next callable. PyTorch's OpenMP threads (libgomp) spun ~15 ms after each call on a
# 2-core Zen 2 EPYC (2026-12-06), and ONNX Runtime's ~60 ms before its runner set force_spinning_stop.
SETTLE_SECONDS = 0.02


def timed_calls(fn: Callable[[], object], *, calls: int = 1, min_seconds: float = 0.0, max_calls: int | None = None,
                sync: Sync = None, settle: float = 0.0) -> list[float]:
    """The one timing loop: milliseconds of each call of ``fn``, at least ``calls`` calls and until ``min_seconds``
    of timed calls have passed (at most ``max_calls``). With ``sync`` (an accelerator's synchronize) the clock
    starts once the device is idle and stops once it has finished the call, not when the call was queued.
    ``settle``: seconds to wait first, untimed, when another runtime ran just before (:data:`SETTLE_SECONDS`)."""
    if settle:
        time.sleep(settle)
    samples: list[float] = []
    spent = 0.0
    while len(samples) < calls or (spent < min_seconds and (max_calls is None or len(samples) < max_calls)):
        if sync is not None:
            sync()
        start = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        elapsed = time.perf_counter() - start
        samples.append(elapsed * 1000.0)
        spent += elapsed
    return samples


def time_calls(
    fn: Callable[[], object],
    *,
    warmup: int = 5,
    min_runs: int = 20,
    max_runs: int = 500,
    min_seconds: float = 2.0,
    sync: Sync = None,
) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then at least ``min_runs`` times and until
    ``min_seconds`` have passed (capped at ``max_runs``); percentiles over the timed calls."""
    if warmup:
        timed_calls(fn, calls=warmup, sync=sync)
    samples = timed_calls(fn, calls=min_runs, min_seconds=min_seconds, max_calls=max_runs, sync=sync)
    return timing_from_samples(samples, warmup)


def timing_from_samples(samples_ms: Sequence[float], warmup: int = 0) -> Timing:
    ordered = sorted(samples_ms)
    return Timing(
        p50_ms=statistics.median(ordered),
        p90_ms=percentile(ordered, 90),
        mean_ms=statistics.fmean(ordered),
        min_ms=ordered[0],
        runs=len(ordered),
        warmup=warmup,
        p25_ms=percentile(ordered, 25),
        p75_ms=percentile(ordered, 75),
        p50_ci_ms=median_ci(ordered),
    )


def median_ci(sorted_values: Sequence[float], z: float = 1.96) -> tuple[float, float]:
    """Distribution-free confidence interval of the median (95 % for ``z=1.96``): the order
    statistics at ranks n/2 -+ z*sqrt(n)/2 (normal approximation of the binomial, rounded
    outwards); the whole range for small samples."""
    n = len(sorted_values)
    half = z * math.sqrt(n) / 2
    low = max(0, math.floor(n / 2 - half) - 1)
    high = min(n - 1, math.ceil(n / 2 + half))
    return sorted_values[low], sorted_values[high]


def median_is_stable(samples_ms: Sequence[float], tolerance: float) -> bool:
    """True when the 95 % confidence interval of the median lies within +-``tolerance``
    (a fraction, e.g. 0.03) of the median."""
    ordered = sorted(samples_ms)
    middle = statistics.median(ordered)
    low, high = median_ci(ordered)
    return max(middle - low, high - middle) <= tolerance * middle


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile of an already sorted list (numpy's default method)."""
    if not sorted_values:
        raise ValueError("no values")
    position = (len(sorted_values) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def load_average() -> float | None:
    """The 1-minute load average (``os.getloadavg``); None where the OS has none."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


FOREIGN_BUSY_SHARE = 0.25  # other processes using more than this share of all cores: the machine is busy


class CpuMeter:
    """How much of the machine's CPU other processes used while ours measured (Linux ``/proc``).

    The load average cannot tell: a benchmark's own threads count in it (two inference threads
    make a load of 2 on an idle 2-core machine), and it trails by a minute. This meter takes
    the machine's busy CPU time over the span (``/proc/stat``) minus what the measuring
    processes used (``/proc/PID/stat``, read with :meth:`note` while they are alive)."""

    def __init__(self, pids: Sequence[int] = ()) -> None:
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._machine_start = _machine_busy_seconds()
        self._wall_start = time.monotonic()
        self.note(os.getpid(), *pids)

    def note(self, *pids: int) -> None:
        """Read the CPU time of ``pids`` (call it after each piece of work, before a process ends)."""
        for pid in pids:
            used = _process_cpu_seconds(pid)
            if used is not None:
                self._first.setdefault(pid, used)
                self._last[pid] = used

    def foreign_share(self) -> float | None:
        """Other processes' CPU time since the start, as a share of all cores over the span (None: no /proc)."""
        self.note(os.getpid())
        machine_end, wall = _machine_busy_seconds(), time.monotonic() - self._wall_start
        if self._machine_start is None or machine_end is None or wall <= 0:
            return None
        own = sum(self._last[pid] - self._first[pid] for pid in self._last)
        return max(0.0, (machine_end - self._machine_start - own) / (wall * machine_cores()))


def _machine_busy_seconds() -> float | None:
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _process_cpu_seconds(pid: int) -> float | None:
    try:
        after_name = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(after_name[11]) + int(after_name[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@dataclass(frozen=True)
class LoadSpan:
    """The 1-minute load average before and after a measurement, the core count, and where Linux
    tells, the share of the CPU that other processes used meanwhile (:class:`CpuMeter`)."""

    before: float | None
    after: float | None
    cores: int
    foreign: float | None = None
    meter: CpuMeter | None = field(default=None, repr=False, compare=False)

    @property
    def busy(self) -> bool:
        """Other processes took CPU time from the runs: more than a quarter of the cores (measured), else
        (no /proc) more runnable work than cores at either end."""
        if self.foreign is not None:
            return self.foreign > FOREIGN_BUSY_SHARE
        return any(load is not None and load > self.cores for load in (self.before, self.after))

    def describe(self) -> str:
        fmt = lambda v: "?" if v is None else f"{v:.2f}"  # noqa: E731
        loads = f"load average {fmt(self.before)} before, {fmt(self.after)} after, on {self.cores} cores"
        if self.foreign is None:
            return loads
        return f"other processes used {100 * self.foreign:.0f} % of the CPU meanwhile; {loads}"


def start_load_span() -> LoadSpan:
    return LoadSpan(load_average(), None, machine_cores(), meter=CpuMeter())


def end_load_span(span: LoadSpan) -> LoadSpan:
    foreign = span.meter.foreign_share() if span.meter is not None else None
    return LoadSpan(span.before, load_average(), span.cores, foreign)


def cis_overlap(first: Timing, second: Timing) -> bool:
    """Whether the 95 % confidence intervals of the two medians overlap: the difference is within the noise."""
    (low_a, high_a), (low_b, high_b) = first.p50_ci_ms, second.p50_ci_ms
    return low_a <= high_b and low_b <= high_a


def speedup(reference: Timing, candidate: Timing, load: LoadSpan) -> tuple[float | None, str]:
    """How many times faster ``candidate`` is than ``reference`` — for two timings measured
    interleaved in one run. Returns (factor, text); the factor is None and the text says
    "not comparable: machine busy (...)" when other processes used the CPU meanwhile (see
    :attr:`LoadSpan.busy`), or "within noise (...)" when the 95 % confidence intervals of the two
    medians overlap."""
    if load.busy:
        return None, f"not comparable: machine busy ({load.describe()})"
    if cis_overlap(reference, candidate):
        return None, (f"within noise ({reference.p50_ms:.3g} vs {candidate.p50_ms:.3g} ms; the 95 % confidence "
                      "intervals of the medians overlap)")
    factor = reference.p50_ms / candidate.p50_ms
    return factor, f"{factor:.2f}x faster" if factor >= 1 else f"{1 / factor:.2f}x slower"


@dataclass(frozen=True)
class InterleavedTimings:
    """Timings of several callables measured in alternation, with the load around them."""

    timings: dict[str, Timing]
    load: LoadSpan

    def speedup(self, reference: str, candidate: str) -> tuple[float | None, str]:
        return speedup(self.timings[reference], self.timings[candidate], self.load)


BURST_SECONDS = 0.05  # timed seconds of one callable per round of time_interleaved


def time_interleaved(
    fns: Mapping[str, Callable[[], object]],
    *,
    warmup: int = 3,
    min_runs: int = 10,
    max_runs: int = 500,
    min_seconds: float = 2.0,
    max_seconds: float | None = None,
    burst_seconds: float = BURST_SECONDS,
    sync: Sync = None,
) -> InterleavedTimings:
    """Time several callables in rounds, so that a slow spell of the machine hits all of them alike. In each
    round each one runs a short burst (``burst_seconds``, at least two calls) after :data:`SETTLE_SECONDS` (the
    previous callable's threads stop spinning), and its first call is not counted: it pays for the switch (cold caches).
    At least ``min_runs`` counted calls each and ``min_seconds`` of timed calls in all; then, with
    ``max_seconds``, more rounds until the 95 % confidence interval of each one's median is clear of the first
    one's (the reference), or ``max_seconds`` of timed calls in all. At most ``max_runs`` counted calls each."""
    for fn in fns.values():
        if warmup:
            timed_calls(fn, calls=warmup, sync=sync)
    load = start_load_span()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    spent = 0.0

    def settled() -> bool:
        if min(map(len, samples.values())) < min_runs or spent < min_seconds:
            return False
        if max_seconds is None or spent >= max_seconds:
            return True
        timings = [timing_from_samples(s) for s in samples.values()]
        return not any(cis_overlap(timings[0], other) for other in timings[1:])

    while not settled() and min(map(len, samples.values())) < max_runs:
        for name, fn in fns.items():
            burst = timed_calls(fn, calls=2, min_seconds=burst_seconds, max_calls=max_runs + 1, sync=sync,
                                settle=SETTLE_SECONDS)
            samples[name] += burst[1:]
            spent += sum(burst) / 1000.0
    return InterleavedTimings({name: timing_from_samples(s, warmup) for name, s in samples.items()}, end_load_span(load))
