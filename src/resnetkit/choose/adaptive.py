"""Adaptive stopping: each variant's timings so far (a :class:`Track`), when it may stop (its median is
stable, or it reached its cap), how long it still needs (the ETA), and its finished record, compared with
the eager fp32 reference timed in the same rounds."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field, replace
from typing import Sequence

from ..core.measure import (LoadSpan, Timing, load_average, median_ci, median_is_stable, percentile, speedup,
                            timing_from_samples)
from .pool import Worker
from .records import BenchConfig, BenchRecord, Variant

# an eager reference this many times slower per GMAC than the median of the run's other references, or whose runs
# spread (interquartile range) over more than this share of its median, is not compared with: a ratio from it would
# measure the reference's trouble (e.g. its threads fighting the deployed runtime's), not the deployed model.
# Depthwise networks are slower per GMAC in eager PyTorch (efficientnet_b0 3.4x resnet50 in the README's bench
# run); the 577 ms reference of issue 19 was 150x
OUT_OF_LINE_PER_GMAC = 25.0
UNSTEADY_SPREAD = 0.5
# a time budget never cuts a cap below this share of it (with at least min_rounds bursts still to come)
MIN_CAP_SHARE = 0.1


@dataclass
class Track:
    """The measurements of one variant so far (parent side)."""

    worker: Worker
    index: int
    variant: Variant
    record: BenchRecord  # static facts from the worker; timings filled in at the end
    is_reference: bool
    reference: "Track | None" = None
    samples: list[float] = field(default_factory=list)
    throughput: list[float] = field(default_factory=list)
    rounds: int = 0
    status: str | None = None  # None while measuring
    load_before: float | None = None
    load_after: float | None = None
    end_to_end: tuple[float, float] | None = None
    best_batch: tuple[int, float] | None = None  # on a GPU: (batch size, images per second)
    cap_share: float = 1.0  # the share of its cap left to it by the run's time budget (see share_budget)
    throughput_runs: int | None = None  # throughput batches to time (None: the config's)

    def needs_throughput(self, config: BenchConfig) -> bool:
        return not self.is_reference and len(self.throughput) < (self.throughput_runs or config.throughput_runs)

    def update_status(self, config: BenchConfig) -> None:
        stable = (len(self.samples) >= config.min_runs and self.rounds >= config.min_rounds
                  and median_is_stable(self.samples, config.tolerance))
        capped = len(self.samples) >= config.max_runs or (
            sum(self.samples) / 1000.0 >= self.max_seconds(config) and self.rounds >= config.min_rounds)
        if (stable and not self.needs_throughput(config)) or capped:
            self.status = "stable" if stable else "capped"
            self.load_after = load_average()

    def max_seconds(self, config: BenchConfig) -> float:
        """This variant's cap in timed batch-1 seconds (its share of it, where the run's budget cut it)."""
        return self.full_cap(config) * self.cap_share

    def full_cap(self, config: BenchConfig) -> float:
        return min(config.max_seconds, config.reference_max_seconds) if self.is_reference else config.max_seconds

    def latency_seconds_at(self, config: BenchConfig, share: float) -> float:
        """Timed batch-1 seconds this variant takes at most with ``share`` of its cap: the cap's share, or
        ``max_runs`` calls at its median so far if that comes first."""
        by_runs = config.max_runs * statistics.median(self.samples) / 1000.0 if self.samples else float("inf")
        return min(self.full_cap(config) * share, by_runs)

    def remaining_seconds(self, config: BenchConfig) -> float:
        """Estimated timed seconds until this variant stops: the CI of the median narrows
        like 1/sqrt(runs), so the runs needed grow with the square of (width / tolerance); and at
        least a burst for each of the ``min_rounds`` rounds still to come."""
        if not self.samples:
            return 0.0
        ordered = sorted(self.samples)
        middle = statistics.median(ordered)
        low, high = median_ci(ordered)
        width = max(middle - low, high - middle) / middle if middle else 0.0
        needed = len(ordered) * (width / config.tolerance) ** 2 if len(ordered) >= 6 else config.min_runs
        needed = min(max(needed, config.min_runs), config.max_runs, self.max_seconds(config) * 1000.0 / middle)
        throughput = ((self.throughput_runs or config.throughput_runs) - len(self.throughput)) * (
            statistics.median(self.throughput) if self.throughput else middle * config.batch_size)
        rounds = max(config.min_rounds - self.rounds, 0) * max(config.burst_seconds, middle / 1000.0)
        return (max(max(needed - len(ordered), 0) * middle / 1000.0, rounds)
                + max(throughput, 0) / 1000.0 * (not self.is_reference))

    def ms_per_gmac(self) -> float | None:
        """Median latency per GMAC so far (None without samples or a MAC count)."""
        if not self.samples or not self.record.gmacs:
            return None
        return statistics.median(self.samples) / self.record.gmacs

    def finished(self, config: BenchConfig, cores: int, other_cpu_share: float | None,
                 neighbours_ms_per_gmac: Sequence[float] = ()) -> BenchRecord:
        """The variant's record with what was measured (``partial`` if it had not stopped yet);
        ``neighbours_ms_per_gmac``: the other models' eager references in this run, to check this one's against."""
        timing = timing_from_samples(self.samples, config.warmup)
        batch_ms = statistics.median(self.throughput) if self.throughput else None
        record = replace(
            self.record, latency_ms_p50=timing.p50_ms, latency_ms_p90=timing.p90_ms, latency_runs=timing.runs,
            latency_ms_p50_ci=list(timing.p50_ci_ms), latency_ms_p25=timing.p25_ms, latency_ms_p75=timing.p75_ms,
            latency_rounds=self.rounds, status=self.status or "partial", load_avg_before=self.load_before,
            load_avg_after=self.load_after if self.status else load_average(), cores=cores,
            other_cpu_share=None if other_cpu_share is None else round(other_cpu_share, 3),
            batch_ms_p50=batch_ms, throughput_ips=config.batch_size / (batch_ms / 1000.0) if batch_ms else None,
            throughput_runs=len(self.throughput), notes=list(self.record.notes),
            latency_cap_seconds=self.max_seconds(config),
            timed_seconds=(sum(self.samples) + sum(self.throughput)) / 1000.0)
        if self.end_to_end:
            record.preprocess_ms_p50, record.e2e_latency_ms_p50 = self.end_to_end
        if self.best_batch:
            record.best_batch_size, record.best_throughput_ips = self.best_batch
        self._compare_with_reference(record, timing, config, neighbours_ms_per_gmac)
        return record

    def reference_trouble(self, neighbours_ms_per_gmac: Sequence[float]) -> str | None:
        """Why this (reference) track's timings are out of line, or None: spread too wide, or too slow per GMAC
        against the other references of the run."""
        ordered = sorted(self.samples)
        middle = statistics.median(ordered)
        spread = (percentile(ordered, 75) - percentile(ordered, 25)) / middle
        if spread > UNSTEADY_SPREAD:
            return f"its runs spread over {100 * spread:.0f} % of its median"
        rate = self.ms_per_gmac()
        if rate is not None and neighbours_ms_per_gmac:
            usual = statistics.median(neighbours_ms_per_gmac)
            if rate > OUT_OF_LINE_PER_GMAC * usual:
                return (f"{rate:.3g} ms per GMAC, {rate / usual:.0f}x the other models' eager references in this run "
                        f"({usual:.3g})")
        return None

    def _compare_with_reference(self, record: BenchRecord, timing: Timing, config: BenchConfig,
                                neighbours_ms_per_gmac: Sequence[float]) -> None:
        reference = self.reference
        if reference is self:
            record.reference_latency_ms_p50, record.vs_reference = timing.p50_ms, "is the reference"
        elif reference is None or not reference.samples:
            record.vs_reference = "no eager fp32 reference" + ("" if config.reference else " (not requested)")
        else:
            ref_timing = timing_from_samples(reference.samples)
            loads = [v for v in (self.load_before, reference.load_before) if v is not None]
            ends = [v for v in (record.load_avg_after, reference.load_after) if v is not None]
            span = LoadSpan(max(loads, default=None), max(ends, default=None), record.cores or 1,
                            record.other_cpu_share)
            record.reference_latency_ms_p50 = ref_timing.p50_ms
            record.reference_timed_seconds = sum(reference.samples) / 1000.0
            trouble = reference.reference_trouble(neighbours_ms_per_gmac)
            if trouble:
                record.vs_reference = f"reference out of line: {trouble}; not compared"
                return
            record.speedup_vs_reference, record.vs_reference = speedup(ref_timing, timing, span)


def share_budget(tracks: Sequence[Track], config: BenchConfig) -> float:
    """Fit the run's timed calls into ``config.budget_seconds``, after its first round (every variant timed once,
    its throughput batch included), and return the share of its cap each variant keeps (1.0: the budget does not
    bind). Where the caps and ``throughput_runs`` batches per variant would take longer, throughput stays at the
    batch already timed and, if the caps still take longer, every cap is cut by the same share (not below
    :data:`MIN_CAP_SHARE`), the largest whose batch-1 seconds fit what the throughput batches left of the budget.
    Variants stop earlier once stable, so the budget bounds the timed calls; it does not fill them. On a slow CPU,
    the eight default models' caps were 89 s of the main job's timed calls (Zen 3, 2 cores, resnet152 at 190 ms)."""
    budget = config.budget_seconds
    if not budget:
        return 1.0
    throughput = sum(statistics.median(t.throughput) / 1000.0 * config.throughput_runs for t in tracks if t.throughput)
    if sum(t.latency_seconds_at(config, 1.0) for t in tracks) + throughput <= budget:
        return 1.0
    for track in tracks:
        track.throughput_runs = max(len(track.throughput), 1)
    left = budget - sum(sum(t.throughput) for t in tracks) / 1000.0
    if sum(t.latency_seconds_at(config, 1.0) for t in tracks) <= left:
        return 1.0
    low, high = MIN_CAP_SHARE, 1.0  # the latency seconds grow with the share: bisect for the largest that fits
    for _ in range(30):
        middle = (low + high) / 2
        if sum(t.latency_seconds_at(config, middle) for t in tracks) <= left:
            low = middle
        else:
            high = middle
    for track in tracks:
        track.cap_share = low
    return low
