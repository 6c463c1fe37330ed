"""``auto``: the default backend for PyTorch models. It measures the available backends that run on the device
(and, on the CPU, intra-op thread counts) on this machine for this model and batch size, runs the fastest and
says which one won (``openvino/bf16 on CPU (auto)``, ``cuda-graph/fp16 on NVIDIA H200 (auto)``); the
measurements go to the tuning cache (:mod:`resnetkit.backends.tuning`), keyed by the CPU, or by the GPU, its
driver and CUDA version, so the next start only builds the winner.

Precision: what was asked for, else each backend's default precision on the device if it is one of
:data:`DEFAULT_PRECISIONS` (on the CPU fp32, or bf16 where the CPU computes bf16 natively: OpenVINO's default
hint says so; on a GPU fp16), else fp32. Never int8 unless asked: int8 needs a calibrated artifact.
Candidates are the registered backends marked ``tried_by_auto`` that run on the device and in the precision
(for a model file: the backends that read it). On a GPU, candidates are timed on inputs already there,
synchronised.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import statistics
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from ..core.device import Device, usable_cores
from ..core.errors import BackendUnavailableError, ResnetkitError
from ..core.measure import timed_calls
from ..core.spec import ModelMeta
from . import tuning
from .base import Backend, Runner, RunnerOptions, make_runner, readers_of, register, registered, run_info
from .tuning import Candidate, Tuning

TRIAL_SECONDS = 0.3  # timed seconds per candidate, spread over interleaved rounds (at least 3 calls a round)
TRIAL_ROUNDS = 3
CLEAR_LOSER = 1.5  # after a round, candidates this many times slower than the fastest stop being timed
# a candidate that keeps memory per batch size (CUDA graphs) must beat the best one that does not by this share: at
# batch 256 a graph of resnet50 ran 1-2 % faster than eager on an H200 (docs/gpu.md), not worth its buffers
CLEARLY_FASTER = 0.03
# what auto runs when no precision is asked for, per device kind: bf16 keeps fp32's top-1 within the bound stated
# in docs/optimize.md on the CPU; on a GPU fp16 (and bf16) agree with CPU fp32 on the CIFAR-10 test set (docs/gpu.md)
DEFAULT_PRECISIONS = {"cpu": ("fp32", "bf16"), "cuda": ("fp16", "bf16", "fp32")}


class AutoRunner:
    """The chosen runner, with the measurements behind the choice (``tuning``) and whether they came from the cache."""

    auto = True

    def __init__(self, chosen: Runner, tuned: Tuning, cached: bool) -> None:
        self.chosen = chosen
        self.tuning = tuned
        self.cached = cached
        self.timings_ms = tuned.timings_ms
        info = run_info(chosen)
        self.backend, self.precision, self.device, self.threads = info.backend, info.precision, info.device, info.threads

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.chosen(batch)


def thread_counts(device: Device, asked: int | None = None) -> list[int | None]:
    """Intra-op thread counts to try on the CPU: the one asked for, else one and every usable core (None on a GPU,
    where threads do not apply)."""
    if device.is_cuda:
        return [None]
    if asked:
        return [asked]
    return sorted({1, usable_cores()})


def _precision_for(backend: Backend, requested: str | None, device: Device) -> str:
    if requested is not None:
        return requested
    default = backend.default_precision(device)
    return default if default in DEFAULT_PRECISIONS[device.kind] else "fp32"


def default_precision(device: Device) -> str:
    """What auto runs on ``device`` when no precision is asked for: the lowest precision of
    :data:`DEFAULT_PRECISIONS` that a candidate runs by default there, else fp32."""
    defaults = {_precision_for(b, None, device) for b in candidates(None, device)}
    return next((p for p in DEFAULT_PRECISIONS[device.kind] if p in defaults and p != "fp32"), "fp32")


def candidates(precision: str | None, device: Device) -> list[Backend]:
    """Available backends auto tries for PyTorch models on ``device`` at ``precision`` (``None``: each one's default)."""
    return [b for b in registered() if b.tried_by_auto and b.factory is not None and b.is_available()
            and device.kind in b.devices and (precision is None or precision in b.precisions)]


def median_latencies(runners: Mapping[Candidate, Runner], batch: torch.Tensor,
                     seconds: float = TRIAL_SECONDS, sync: Callable[[], None] | None = None) -> dict[Candidate, float]:
    """Median latency (ms) of each runner on ``batch``, measured in interleaved rounds so that a
    burst of background load hits every candidate alike (one warm-up call each first). After
    each round, candidates slower than :data:`CLEAR_LOSER` times the fastest median so far sit
    out the remaining rounds: their place in the ranking is settled, and timing them is most of
    a trial's cost (eager at 1 thread is 4-8x slower than the winner here). Once one candidate is
    left, the trial ends."""
    samples: dict[Candidate, list[float]] = {c: [] for c in runners}
    for runner in runners.values():
        runner(batch)
    racing = dict(runners)
    for _ in range(TRIAL_ROUNDS):
        if len(racing) == 1 and all(samples.values()):
            break
        for candidate, runner in racing.items():
            calls = 3 if not samples[candidate] else 1
            samples[candidate] += timed_calls(lambda r=runner: r(batch), calls=calls, min_seconds=seconds / TRIAL_ROUNDS,
                                              sync=sync)
        fastest = min(statistics.median(samples[c]) for c in racing)
        racing = {c: r for c, r in racing.items() if statistics.median(samples[c]) <= CLEAR_LOSER * fastest}
    return {c: statistics.median(values) for c, values in samples.items()}


def choose(timings: Mapping[Candidate, float]) -> Candidate:
    """The fastest candidate; one whose backend keeps memory per batch size only when it is faster than the fastest
    of the others by more than :data:`CLEARLY_FASTER`."""
    fastest = min(timings, key=timings.__getitem__)
    heavy = {b.name for b in registered() if b.memory_per_batch_size}
    lean = {c: t for c, t in timings.items() if c.backend not in heavy}
    if fastest in lean or not lean:
        return fastest
    runner_up = min(lean, key=lean.__getitem__)
    return fastest if timings[fastest] < (1 - CLEARLY_FASTER) * timings[runner_up] else runner_up


def tuned(name: str, key: str, meta: ModelMeta, options: RunnerOptions,
          builders: Mapping[Candidate, Callable[[], Runner]]) -> AutoRunner:
    """The cached choice for this model, batch size and precision if there is one, else measure
    every candidate that builds, keep the fastest and store the measurements."""
    cached = None if options.retune else tuning.lookup(key, options.batch_size, options.precision, options.threads,
                                                       options.device)
    if cached is not None and cached.choice in builders:
        return AutoRunner(builders[cached.choice](), cached, cached=True)
    runners = {}
    for candidate, build in builders.items():
        try:
            runner = build()
        except BackendUnavailableError:
            continue
        if options.precision is None or runner.precision == options.precision:  # e.g. no fp16 arithmetic here
            runners[candidate] = runner
    if not runners:
        raise ResnetkitError(f"No backend can run {name} with these options; see 'resnetkit backends'.")
    batch = torch.randn(max(options.batch_size, 1), *meta.preprocessing.input_shape, device=options.device.torch)
    with (options.trial_gate or contextlib.nullcontext)():
        timings = median_latencies(runners, batch, sync=options.device.synchronize)
    best = choose(timings)
    entry = Tuning(name, key, options.batch_size, options.precision, options.threads, best,
                   {c.label: t for c, t in timings.items()}, machine=tuning.machine(options.device))
    tuning.store(entry)
    return AutoRunner(runners[best], entry, cached=False)


def _factory(module: nn.Module, meta: ModelMeta, options: RunnerOptions) -> AutoRunner:
    def build(candidate: Candidate) -> Runner:
        chosen = dataclasses.replace(options, precision=candidate.precision, threads=candidate.threads)
        return make_runner(copy.deepcopy(module), meta, candidate.backend, chosen)

    tried = [Candidate(b.name, _precision_for(b, options.precision, options.device), threads)
             for b in candidates(options.precision, options.device)
             for threads in thread_counts(options.device, options.threads)]
    return tuned(meta.name, tuning.module_key(module), meta, options, {c: (lambda c=c: build(c)) for c in tried})


def _read_any(path: Path, options: RunnerOptions) -> tuple[AutoRunner, ModelMeta]:
    """A model file on the fastest of the backends that read it (and thread counts)."""
    read: dict[Candidate, tuple[Runner, ModelMeta]] = {}

    def build(candidate: Candidate) -> Runner:
        fmt = readers_of(path.suffix.lower())[candidate.backend]
        read[candidate] = fmt.read(path, dataclasses.replace(options, threads=candidate.threads))
        return read[candidate][0]

    tried = [Candidate(name, options.precision, threads) for name in readers_of(path.suffix.lower())
             for threads in thread_counts(options.device, options.threads)]
    build(tried[0])  # the file's metadata (input shape) is needed before measuring
    meta = read[tried[0]][1]
    builders = {c: (lambda c=c: read[c][0] if c in read else build(c)) for c in tried}
    return tuned(path.name, tuning.file_key(path), meta, options, builders), meta


register(Backend("auto", "measures the backends that run on the device (and thread counts on the CPU) for the model "
                         "and batch size, cached per machine and device; runs the fastest",
                 ("fp32", "bf16", "fp16", "int8"), _factory, default_precision=default_precision, devices=("cpu", "cuda"),
                 package="torch", tried_by_auto=False, reads_any=_read_any))
