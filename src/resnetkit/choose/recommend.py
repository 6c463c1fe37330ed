"""Recommend models for a user's constraints from measured bench records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from .bench import BenchRecord


@dataclass(frozen=True)
class Constraints:
    max_latency_ms: float | None = None  # on p50 at batch 1, measured here
    max_size_mb: float | None = None  # weights file as saved in the variant's precision
    min_top1: float | None = None

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
                "size_mb": size_mb(self.record), "top1": self.record.top1, "pareto": self.pareto,
                "reasons": self.reasons}


@dataclass
class Recommendation:
    constraints: Constraints
    recommended: list[Candidate]  # best first
    excluded: list[Candidate]

    def to_dict(self) -> dict[str, Any]:
        return {"constraints": self.constraints.describe(),
                "recommended": [c.to_dict() for c in self.recommended],
                "excluded": [c.to_dict() for c in self.excluded]}


def size_mb(record: BenchRecord) -> float | None:
    """Size of the weights as deployed: fp16/bf16 variants store 2 bytes per weight."""
    return record.size_mb_fp16 if record.precision in ("fp16", "bf16") else record.size_mb_fp32


def pareto_front(records: Sequence[BenchRecord]) -> list[BenchRecord]:
    """Records with a top-1 for which no other record on the same dataset is at least as fast
    and as accurate, and better in one. Accuracies on different datasets are never compared."""
    scored = [r for r in records if r.top1 is not None]
    return [r for r in scored if not any(
        o.accuracy_dataset == r.accuracy_dataset and
        o is not r and o.latency_ms_p50 <= r.latency_ms_p50 and o.top1 >= r.top1  # type: ignore[operator]
        and (o.latency_ms_p50 < r.latency_ms_p50 or o.top1 > r.top1)  # type: ignore[operator]
        for o in scored)]


def recommend(records: Sequence[BenchRecord], constraints: Constraints = Constraints()) -> Recommendation:
    """Variants meeting every constraint, most accurate first (then fastest), each with its reasons."""
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
        ("size", size_mb(record), c.max_size_mb, "MB", lambda v, lim: v <= lim, "<=", ">"),
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
    if not c.max_latency_ms and not c.max_size_mb and not c.min_top1:
        passed.append(f"top-1 {_fmt(record.top1)} %{_dataset('top-1', record)}, p50 {record.latency_ms_p50:.1f} ms")
    return failed, passed


def _dominating(record: BenchRecord, records: Sequence[BenchRecord]) -> BenchRecord | None:
    if record.top1 is None:
        return None
    for other in pareto_front(records):
        if other.accuracy_dataset == record.accuracy_dataset and other.latency_ms_p50 <= record.latency_ms_p50 and other.top1 >= record.top1:  # type: ignore[operator]
            return other
    return None


def _dataset(name: str, record: BenchRecord) -> str:
    return f" on {record.accuracy_dataset}" if name == "top-1" and record.accuracy_dataset else ""


def _fmt(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"
