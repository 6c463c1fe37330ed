"""Recommend models from measured bench records: for a user's constraints, or, without any,
one model per dataset at the knee of the measured accuracy/latency Pareto front."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from .records import BenchRecord


@dataclass(frozen=True)
class Constraints:
    max_latency_ms: float | None = None  # on p50 at batch 1, measured here
    max_size_mb: float | None = None  # weights file as saved in the variant's precision
    min_top1: float | None = None

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.max_latency_ms, self.max_size_mb, self.min_top1))

    def describe(self) -> str:
        parts = [f"p50 latency <= {self.max_latency_ms:g} ms" if self.max_latency_ms is not None else "",
                 f"size <= {self.max_size_mb:g} MB" if self.max_size_mb is not None else "",
                 f"top-1 >= {self.min_top1:g} %" if self.min_top1 is not None else ""]
        return ", ".join(p for p in parts if p) or "no constraints"


@dataclass
class Candidate:
    record: BenchRecord
    reasons: list[str] = field(default_factory=list)  # why it qualifies, or why it was excluded
    pareto: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.record.label, "latency_ms_p50": self.record.latency_ms_p50,
                "size_mb": size_mb(self.record), "top1": self.record.top1,
                "accuracy_source": self.record.accuracy_source, "pareto": self.pareto, "reasons": self.reasons}


@dataclass
class Pick:
    """The one model recommended for a dataset without constraints: the knee of its front."""

    dataset: str
    record: BenchRecord
    reason: str
    front: list[BenchRecord]  # the Pareto front of this dataset, fastest first
    caveats: list[str] = field(default_factory=list)  # why the pick may not hold

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "model": self.record.label, "latency_ms_p50": self.record.latency_ms_p50,
                "top1": self.record.top1, "accuracy_source": self.record.accuracy_source, "reason": self.reason,
                "caveats": self.caveats,
                "front": [{"model": r.label, "latency_ms_p50": r.latency_ms_p50, "top1": r.top1} for r in self.front]}


@dataclass
class Recommendation:
    constraints: Constraints
    recommended: list[Candidate]  # best first; without constraints: the picks' records
    excluded: list[Candidate]
    picks: list[Pick] = field(default_factory=list)  # without constraints: one per dataset
    unscored: list[BenchRecord] = field(default_factory=list)  # without constraints: records without a top-1

    def to_dict(self) -> dict[str, Any]:
        return {"constraints": self.constraints.describe(),
                "recommended": [c.to_dict() for c in self.recommended],
                "excluded": [c.to_dict() for c in self.excluded],
                "picks": [p.to_dict() for p in self.picks],
                "unscored": [r.label for r in self.unscored]}


def size_mb(record: BenchRecord) -> float | None:
    """Size of the weights as deployed: fp16/bf16 variants store 2 bytes per weight."""
    return record.size_mb_fp16 if record.precision in ("fp16", "bf16") else record.size_mb_fp32


def _size_basis(record: BenchRecord) -> str:
    """Which weights size :func:`size_mb` takes, for the reasons people read."""
    return "(fp16 weights)" if record.precision in ("fp16", "bf16") else "(fp32 weights)"


def pareto_front(records: Sequence[BenchRecord]) -> list[BenchRecord]:
    """Records with a top-1 for which no other record on the same dataset is at least as fast
    and as accurate, and better in one. Accuracies on different datasets are never compared."""
    scored = [r for r in records if r.top1 is not None]
    return [r for r in scored if not any(
        o.accuracy_dataset == r.accuracy_dataset and
        o is not r and o.latency_ms_p50 <= r.latency_ms_p50 and o.top1 >= r.top1  # type: ignore[operator]
        and (o.latency_ms_p50 < r.latency_ms_p50 or o.top1 > r.top1)  # type: ignore[operator]
        for o in scored)]


def knee(front: Sequence[BenchRecord]) -> BenchRecord:
    """The knee of one dataset's Pareto front (Kneedle's rule, Satopaa et al. 2011): with
    log latency and top-1 each scaled to [0, 1] over the front, the point furthest above the
    line from the fastest to the most accurate model, i.e. where extra accuracy starts to
    cost more (relative) latency than it gives. The fastest model when no point is above it."""
    ordered = sorted(front, key=lambda r: r.latency_ms_p50)
    fastest, slowest = ordered[0], ordered[-1]
    x_span = math.log(slowest.latency_ms_p50 / fastest.latency_ms_p50) or 1.0
    y_span = (slowest.top1 - fastest.top1) or 1.0  # type: ignore[operator]

    def lift(r: BenchRecord) -> float:
        return (r.top1 - fastest.top1) / y_span - math.log(r.latency_ms_p50 / fastest.latency_ms_p50) / x_span  # type: ignore[operator]

    best = max(ordered, key=lift)
    return best if lift(best) > 1e-9 else fastest


def pick_per_dataset(records: Sequence[BenchRecord]) -> list[Pick]:
    """One pick per dataset (accuracies on different datasets are never ranked together)."""
    picks = []
    for dataset in dict.fromkeys(r.accuracy_dataset for r in records):
        mine = [r for r in records if r.accuracy_dataset == dataset]
        front = sorted(pareto_front(mine), key=lambda r: r.latency_ms_p50)
        if front:
            chosen = knee(front)
            picks.append(Pick(dataset, chosen, _knee_reason(chosen, front), front, _caveats(chosen, front)))
    return picks


def _caveats(chosen: BenchRecord, front: Sequence[BenchRecord]) -> list[str]:
    """What could overturn the pick: a busy machine, latencies whose confidence intervals overlap."""
    caveats = []
    busy = [r.load_span for r in front if r.load_span.busy]
    if busy:
        caveats.append(f"the machine was busy while measuring ({busy[0].describe()}): "
                       "the latencies, and so this pick, may not hold on an idle machine; measure again when it is idle")
    overlapping = [r.label for r in front if r is not chosen and _overlap(r, chosen)]
    if overlapping:
        caveats.append(f"its latency's 95 % confidence interval overlaps that of {', '.join(overlapping)}: "
                       "their order by latency is not certain")
    return caveats


def _overlap(a: BenchRecord, b: BenchRecord) -> bool:
    if not a.latency_ms_p50_ci or not b.latency_ms_p50_ci:
        return False
    return a.latency_ms_p50_ci[0] <= b.latency_ms_p50_ci[1] and b.latency_ms_p50_ci[0] <= a.latency_ms_p50_ci[1]


def _knee_reason(chosen: BenchRecord, front: Sequence[BenchRecord]) -> str:
    """Why the knee: what the step to it bought, and what the next step would cost."""
    if len(front) == 1:
        return "the only model on the Pareto front: no other is as fast or as accurate"
    at = front.index(chosen)
    parts = []
    if at > 0:
        parts.append(f"{_step(front[at - 1], chosen)} over {front[at - 1].label}")
    if at + 1 < len(front):
        parts.append(f"the next model on the front, {front[at + 1].label}, gives only {_step(chosen, front[at + 1])}")
    if len(front) == 2:
        where = "two models on the Pareto front, so no knee: the faster one"
    elif at == 0:
        where = ("the fastest model on the Pareto front: no model on it lies above the line from the fastest to "
                 "the most accurate (top-1 vs log latency)")
    else:
        where = "at the knee of the accuracy/latency Pareto front"
    return f"{where}: " + "; ".join(parts)


def _step(low: BenchRecord, high: BenchRecord) -> str:
    return (f"{high.top1 - low.top1:+.2f} top-1 points for {high.latency_ms_p50 / low.latency_ms_p50:.2f}x "  # type: ignore[operator]
            "the latency")


def recommend(records: Sequence[BenchRecord], constraints: Constraints = Constraints()) -> Recommendation:
    """Variants meeting every constraint, most accurate first (then fastest), each with its
    reasons; without constraints, one model per dataset at the knee of its Pareto front."""
    if not constraints.any:
        picks = pick_per_dataset(records)
        return Recommendation(constraints, [Candidate(p.record, [p.reason], True) for p in picks], [], picks,
                              [r for r in records if r.top1 is None])
    front = {id(r) for r in pareto_front(records)}
    recommended, excluded = [], []
    for record in records:
        failed, passed = _check(record, constraints)
        candidate = Candidate(record, failed or passed, id(record) in front)
        (excluded if failed else recommended).append(candidate)
    recommended.sort(key=lambda c: (c.record.accuracy_dataset,
                                    -(c.record.top1 if c.record.top1 is not None else -1.0), c.record.latency_ms_p50))
    for candidate in recommended:
        if candidate.pareto:
            candidate.reasons.append("on the accuracy/latency Pareto front")
        else:
            better = _dominating(candidate.record, records)
            if better:
                candidate.reasons.append(f"dominated by {better.label} (as fast or faster and as accurate or more)")
    return Recommendation(constraints, recommended, excluded)


def _check(record: BenchRecord, c: Constraints) -> tuple[list[str], list[str]]:
    failed, passed = [], []
    checks = [
        ("p50 latency", record.latency_ms_p50, c.max_latency_ms, "ms", lambda v, lim: v <= lim, "<=", ">"),
        (f"size {_size_basis(record)}", size_mb(record), c.max_size_mb, "MB", lambda v, lim: v <= lim, "<=", ">"),
        ("top-1", record.top1, c.min_top1, "%", lambda v, lim: v >= lim, ">=", "<"),
    ]
    for name, value, limit, unit, ok, good_op, bad_op in checks:
        if limit is None:
            continue
        if value is None:
            failed.append(f"{name} unknown")
        elif ok(value, limit):
            passed.append(f"{name} {value:.2f} {unit} {good_op} {limit:g}" + _dataset(name, record))
        else:
            failed.append(f"{name} {value:.2f} {unit} {bad_op} {limit:g}" + _dataset(name, record))
    return failed, passed


def _dominating(record: BenchRecord, records: Sequence[BenchRecord]) -> BenchRecord | None:
    if record.top1 is None:
        return None
    for other in pareto_front(records):
        if other.accuracy_dataset == record.accuracy_dataset and other.latency_ms_p50 <= record.latency_ms_p50 and other.top1 >= record.top1:  # type: ignore[operator]
            return other
    return None


def _dataset(name: str, record: BenchRecord) -> str:
    if name != "top-1":
        return ""
    where = f" on {record.accuracy_dataset}" if record.accuracy_dataset else ""
    return f"{where} ({accuracy_kind(record)})"


def accuracy_kind(record: BenchRecord) -> str:
    """Whose a record's top-1 is: the weights' published figure (for fp32 where another precision ran) or measured
    here on how many images (bench --eval)."""
    if record.eval_images:
        return f"measured on {record.eval_images} images"
    return "published for fp32" if record.accuracy_source.startswith("published for fp32") else "published"

