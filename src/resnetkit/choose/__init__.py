"""Choose a model: measure accuracy, size and speed on this machine, then recommend."""

from __future__ import annotations

from .bench import BenchConfig, BenchRecord, bench
from .recommend import Constraints, Recommendation, recommend

__all__ = ["BenchConfig", "BenchRecord", "Constraints", "Recommendation", "bench", "recommend"]
