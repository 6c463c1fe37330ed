"""``auto``: measure the available backends on this machine for this model and batch size
and run the fastest; the runner's ``backend`` says which one won, e.g. ``openvino (auto)``."""

from __future__ import annotations

import copy
import time
from typing import Callable, Mapping

import torch
from torch import nn

from ..core.errors import BackendUnavailableError, ResnetkitError
from .base import Runner, RunnerOptions, available_backends, make_runner, register_backend
from ..core.spec import ModelMeta

CANDIDATES = ("openvino", "onnxruntime", "eager")  # torch.compile is left out: it compiles for tens of seconds
TRIAL_SECONDS = 0.5


class AutoRunner:
    """The fastest measured runner; ``timings_ms`` holds every candidate's median latency."""

    def __init__(self, chosen: Runner, timings_ms: dict[str, float]) -> None:
        self.chosen = chosen
        self.timings_ms = timings_ms
        self.backend = f"{chosen.backend} (auto)"
        self.precision = chosen.precision

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.chosen(batch)


def median_ms(runner: Runner, batch: torch.Tensor, seconds: float = TRIAL_SECONDS) -> float:
    """Median latency of ``runner`` on ``batch`` over about ``seconds`` (after one warm-up call)."""
    runner(batch)
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < 3 or (time.perf_counter() - start < seconds and len(samples) < 50):
        t0 = time.perf_counter()
        runner(batch)
        samples.append((time.perf_counter() - t0) * 1000.0)
    return sorted(samples)[len(samples) // 2]


def fastest(builders: Mapping[str, Callable[[], Runner]], meta: ModelMeta, batch_size: int) -> AutoRunner:
    """Build each candidate, time it at ``batch_size``, keep the fastest. Candidates that
    cannot run the requested precision are skipped."""
    batch = torch.randn(max(batch_size, 1), *meta.preprocessing.input_shape)
    runners: dict[str, Runner] = {}
    timings: dict[str, float] = {}
    for name, build in builders.items():
        try:
            runners[name] = build()
        except BackendUnavailableError:
            continue
        timings[name] = median_ms(runners[name], batch)
    if not timings:
        raise ResnetkitError(f"No backend can run {meta.name} with these options: tried {', '.join(builders)}.")
    best = min(timings, key=timings.__getitem__)
    return AutoRunner(runners[best], timings)


def _factory(module: nn.Module, meta: ModelMeta, options: RunnerOptions) -> AutoRunner:
    names = [n for n in CANDIDATES if n in available_backends()]
    builders = {n: (lambda n=n: make_runner(copy.deepcopy(module), meta, n, options)) for n in names}
    return fastest(builders, meta, options.batch_size)


register_backend("auto", _factory)
