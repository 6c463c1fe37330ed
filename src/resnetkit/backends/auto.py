"""``auto``: measure the available backends on this machine for this model and batch size
and run the fastest; the runner's ``backend`` says which one won, e.g. ``openvino (auto)``.

The candidates are the registered backends marked ``tried_by_auto`` that run the requested
precision (for a file: the backends that read it)."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from ..core.errors import BackendUnavailableError, ResnetkitError
from ..core.spec import ModelMeta
from .base import Backend, Runner, RunnerOptions, make_runner, readers_of, register, registered

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
    cannot run with these options are skipped."""
    runners = {}
    for name, build in builders.items():
        try:
            runners[name] = build()
        except BackendUnavailableError:
            continue
    return pick(runners, meta, batch_size)


def pick(runners: Mapping[str, Runner], meta: ModelMeta, batch_size: int) -> AutoRunner:
    """Time each of ``runners`` at ``batch_size`` and keep the fastest."""
    if not runners:
        raise ResnetkitError(f"No backend can run {meta.name} with these options; see 'resnetkit backends'.")
    batch = torch.randn(max(batch_size, 1), *meta.preprocessing.input_shape)
    timings = {name: median_ms(runner, batch) for name, runner in runners.items()}
    best = min(timings, key=timings.__getitem__)
    return AutoRunner(runners[best], timings)


def candidates(precision: str | None) -> list[Backend]:
    """Available backends auto tries for PyTorch models at ``precision`` (``None``: each one's default)."""
    return [b for b in registered() if b.tried_by_auto and b.factory is not None and b.is_available()
            and (precision is None or precision in b.precisions)]


def _factory(module: nn.Module, meta: ModelMeta, options: RunnerOptions) -> AutoRunner:
    builders = {b.name: (lambda b=b: make_runner(copy.deepcopy(module), meta, b.name, options))
                for b in candidates(options.precision)}
    return fastest(builders, meta, options.batch_size)


def _read_any(path: Path, options: RunnerOptions) -> tuple[AutoRunner, ModelMeta]:
    """A model file on the fastest of the backends that read it."""
    read: dict[str, tuple[Runner, ModelMeta]] = {}
    for name, fmt in readers_of(path.suffix.lower()).items():
        try:
            read[name] = fmt.read(path, options)
        except BackendUnavailableError:
            continue
    if not read:
        raise ResnetkitError(f"No backend can run {path.name} with these options; see 'resnetkit backends'.")
    meta = next(iter(read.values()))[1]
    return pick({name: runner for name, (runner, _) in read.items()}, meta, options.batch_size), meta


register(Backend("auto", "measures the available backends for the model and batch size; runs the fastest",
                 ("fp32", "bf16", "fp16", "int8"), _factory, package="torch", tried_by_auto=False, reads_any=_read_any))
