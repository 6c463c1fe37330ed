"""``auto``: the default backend for PyTorch models. It measures the available backends that run on the device
(and, on the CPU, intra-op thread counts) on this machine for this model and batch size, runs the fastest and
says which one won (``openvino/bf16 on CPU (auto)``, ``cuda-graph/fp16 on NVIDIA H200 (auto)``); the
measurements go to the tuning cache (:mod:`resnetkit.backends.tuning`), keyed by the CPU, or by the GPU, its
driver and CUDA version, so the next start only builds the winner.

Precision: what was asked for, else each backend's default precision on the device if it is one of
:data:`DEFAULT_PRECISIONS` (on the CPU fp32, or bf16 where the CPU computes bf16 natively: OpenVINO's default
hint says so; on a GPU fp16), else fp32. Never int8 unless asked: int8 needs a calibrated artifact.
Candidates are the registered backends marked ``tried_by_auto`` that run on the device and in the precision
(for a model file: the backends that read it); on the CPU each with its runtime's own thread setting and with one
thread. On the CPU the candidates are built and timed in a separate Python process
(:mod:`resnetkit.backends.trial`; bench's comes ready from its fork server), and this process builds only the
winner: runtimes keep thread pools and pinned cores for the life of a process, so losers built beside the winner
could slow it down. On a GPU, candidates are
timed in this process (no thread pools to leave behind; a second CUDA context would cost memory and seconds), on
inputs already there, synchronised.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import pickle
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Mapping, Protocol

import torch
from torch import nn

from ..core.device import Device, usable_cores
from ..core.errors import BackendUnavailableError, ResnetkitError
from ..core.measure import SETTLE_SECONDS, median_ci, timed_calls
from ..core.spec import ModelMeta
from . import tuning
from .base import (Backend, Runner, RunnerOptions, TrialGate, get_backend, make_runner, readers_of, register, registered,
                   run_info)
from .common import weights_unchanged
from .tuning import Candidate, Tuning

log = logging.getLogger(__name__)

TRIAL_SECONDS = 0.3  # timed seconds per candidate, spread over interleaved rounds (at least one call a round)
TRIAL_ROUNDS = 3
CLEAR_LOSER = 1.5  # after a round, candidates this many times slower than the fastest stop being timed
# ... after the first round, which times each candidate once (or for its share of a round, if longer), this many: one
# call after the warm-up is a rough estimate, but enough to drop eager and one-thread candidates 2-6x slower than
# the fastest; timing three calls each (before) took 3.2 of the 4.5 s of resnet152's trial on a 2-core Zen 4
FIRST_ROUND_LOSER = 2.0
# after the rounds, candidates whose median's 95 % CI still overlaps the fastest one's get more rounds, up to this
# many more timed seconds each: on a 2-core Zen 3, 0.3 s each picked ONNX Runtime at one thread for shufflenet_v2
# (6.9 against 7.6 ms in the trial), which bench then timed at 8.2 ms (OpenVINO at two threads: 6.5 ms in another run)
TIEBREAK_SECONDS = 0.6
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
    """Intra-op thread settings to try on the CPU: the one asked for, else the runtime's own (None: what it does
    alone, which knows the cores it should use) and one thread where there are more usable cores (None on a GPU,
    where threads do not apply)."""
    if device.is_cuda:
        return [None]
    if asked:
        return [asked]
    return [None, 1] if usable_cores() > 1 else [None]


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
    each round, candidates slower than :data:`CLEAR_LOSER` (:data:`FIRST_ROUND_LOSER` after the first) times
    the fastest median so far sit out the remaining rounds: their place in the ranking is settled, and timing
    them is most of a trial's cost (eager at 1 thread is 4-8x slower than the winner here). Once one candidate
    is left, the trial ends. Candidates still tied with the fastest after the rounds (overlapping confidence
    intervals of the median) race on for up to :data:`TIEBREAK_SECONDS` each, until one of them is clear."""
    samples: dict[Candidate, list[float]] = {c: [] for c in runners}
    for runner in runners.values():
        runner(batch)

    def burst(candidate: Candidate) -> None:
        runner = runners[candidate]
        samples[candidate] += timed_calls(lambda: runner(batch), calls=1, min_seconds=seconds / TRIAL_ROUNDS,
                                          sync=sync, settle=SETTLE_SECONDS)

    racing = list(runners)
    for round_number in range(TRIAL_ROUNDS):
        if len(racing) == 1 and all(samples.values()):
            break
        for candidate in racing:
            burst(candidate)
        fastest = min(statistics.median(samples[c]) for c in racing)
        loser = FIRST_ROUND_LOSER if round_number == 0 else CLEAR_LOSER
        racing = [c for c in racing if statistics.median(samples[c]) <= loser * fastest]
    tied, timed_before = _tied_with_fastest(samples, racing), {c: sum(samples[c]) for c in racing}
    while len(tied) > 1 and all(sum(samples[c]) - timed_before[c] < TIEBREAK_SECONDS * 1000.0 for c in tied):
        for candidate in tied:
            burst(candidate)
        tied = _tied_with_fastest(samples, tied)
    return {c: statistics.median(values) for c, values in samples.items()}


def _tied_with_fastest(samples: Mapping[Candidate, list[float]], racing: list[Candidate]) -> list[Candidate]:
    """The candidates in ``racing`` whose median's 95 % confidence interval reaches down into the fastest one's."""
    intervals = {c: median_ci(sorted(samples[c])) for c in racing}
    fastest = min(racing, key=lambda c: statistics.median(samples[c]))
    return [c for c in racing if intervals[c][0] <= intervals[fastest][1]]


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


class Source(Protocol):
    """What auto builds its candidates from (picklable, to be built again in the trial process)."""

    def build(self, candidate: Candidate, options: RunnerOptions) -> tuple[Runner, ModelMeta]: ...


@dataclasses.dataclass(frozen=True)
class ModuleSource:
    """A PyTorch module: each candidate gets a copy (the module itself on backends that only read it), in the
    candidate's precision and threads."""

    module: nn.Module
    meta: ModelMeta

    def build(self, candidate: Candidate, options: RunnerOptions) -> tuple[Runner, ModelMeta]:
        chosen = dataclasses.replace(options, precision=candidate.precision, threads=candidate.threads)
        module = self.module if get_backend(candidate.backend).only_reads_module else copy.deepcopy(self.module)
        return make_runner(module, self.meta, candidate.backend, chosen), self.meta


@dataclasses.dataclass(frozen=True)
class FileSource:
    """A model file, read by each backend that reads it (the file's own precision unless one was asked for)."""

    path: Path

    def build(self, candidate: Candidate, options: RunnerOptions) -> tuple[Runner, ModelMeta]:
        fmt = readers_of(self.path.suffix.lower())[candidate.backend]
        return fmt.read(self.path, dataclasses.replace(options, threads=candidate.threads))


def measure(source: Source, tried: list[Candidate], options: RunnerOptions, seconds: float = TRIAL_SECONDS,
            timing_gate: TrialGate | None = None) -> dict[Candidate, float]:
    """Build every candidate that builds (in the precision asked for, if one was) and time them interleaved on a
    random batch for about ``seconds`` each, inside ``timing_gate`` (building happens outside it): median latency
    (ms) per candidate. Raises :class:`ResnetkitError` when none builds."""
    runners: dict[Candidate, Runner] = {}
    meta = None
    with weights_unchanged():
        for candidate in tried:
            try:
                runner, meta = source.build(candidate, options)
            except BackendUnavailableError:
                continue
            if options.precision is None or runner.precision == options.precision:  # e.g. no fp16 arithmetic here
                runners[candidate] = runner
    if not runners or meta is None:
        raise ResnetkitError("No backend can run this model with these options; see 'resnetkit backends'.")
    batch = torch.randn(max(options.batch_size, 1), *meta.preprocessing.input_shape, device=options.device.torch)
    with (timing_gate or contextlib.nullcontext)():
        return median_latencies(runners, batch, seconds, sync=options.device.synchronize)


class TrialFailed(ResnetkitError):
    """auto's trial process ended without an outcome."""

    def __init__(self, why: str) -> None:
        super().__init__(f"auto's trial process failed ({why}). Pick a backend with --backend instead, or report this.")
        self.why = why

    def __reduce__(self) -> tuple[type, tuple[str]]:  # sent back from a trial helper whole, not wrapped twice
        return type(self), (self.why,)


def measure_apart(source: Source, tried: list[Candidate], options: RunnerOptions) -> dict[Candidate, float]:
    """:func:`measure` in a fresh process on the CPU (see the module's docstring): ``options.trial_process``, else a
    new Python interpreter; in this process on a GPU, or when ``source`` cannot be sent to another process (e.g. a
    module of a class defined in ``__main__``). The candidates are timed inside ``options.trial_gate``."""
    job = (source, tried, dataclasses.replace(options, trial_gate=None, trial_process=None), TRIAL_SECONDS)
    try:
        payload = pickle.dumps(job)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        log.warning("auto: timing the candidates in this process (the model cannot be sent to another: %s)", exc)
        payload = None
    if options.device.is_cuda or payload is None:
        return measure(*job, timing_gate=options.trial_gate)
    outcome = (options.trial_process or in_new_interpreter)(payload, options.trial_gate)
    if isinstance(outcome, ResnetkitError):
        raise outcome
    return outcome  # type: ignore[return-value]


def in_new_interpreter(payload: bytes, timing_gate: TrialGate | None = None) -> object:
    """The outcome of the trial job ``payload`` run by ``python -m resnetkit.backends.trial`` (inside ``timing_gate``
    as a whole: building too)."""
    with (timing_gate or contextlib.nullcontext)(), tempfile.TemporaryDirectory(prefix="resnetkit-trial-") as folder:
        result_path = Path(folder) / "result.pickle"
        done = subprocess.run([sys.executable, "-m", f"{__package__}.trial", str(result_path)], input=payload,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        if not result_path.is_file():
            last = (done.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
            raise TrialFailed(f"exit {done.returncode}: {last}")
        return pickle.loads(result_path.read_bytes())


def tuned(name: str, key: str, options: RunnerOptions, source: Source,
          tried: list[Candidate]) -> tuple[AutoRunner, ModelMeta]:
    """The cached choice for this model, batch size and precision if there is one, else measure every candidate
    (:func:`measure_apart`), keep the fastest and store the measurements. Only the chosen one is built here."""
    cached = None if options.retune else tuning.lookup(key, options.batch_size, options.precision, options.threads,
                                                       options.device)
    if cached is not None and cached.choice in tried:
        runner, meta = source.build(cached.choice, options)
        return AutoRunner(runner, cached, cached=True), meta
    try:
        timings = measure_apart(source, tried, options)
    except ResnetkitError as exc:
        raise ResnetkitError(f"{name}: {exc}") from None
    best = choose(timings)
    entry = Tuning(name, key, options.batch_size, options.precision, options.threads, best,
                   {c.label: t for c, t in timings.items()}, machine=tuning.machine(options.device))
    tuning.store(entry)
    runner, meta = source.build(best, options)
    return AutoRunner(runner, entry, cached=False), meta


def _tried(backends: list[str], precision: Callable[[str], str | None], options: RunnerOptions) -> list[Candidate]:
    return [Candidate(name, precision(name), threads) for name in backends
            for threads in thread_counts(options.device, options.threads)]


def _factory(module: nn.Module, meta: ModelMeta, options: RunnerOptions) -> AutoRunner:
    by_name = {b.name: b for b in candidates(options.precision, options.device)}
    tried = _tried(list(by_name), lambda name: _precision_for(by_name[name], options.precision, options.device),
                   options)
    return tuned(meta.name, tuning.module_key(module), options, ModuleSource(module, meta), tried)[0]


def _read_any(path: Path, options: RunnerOptions) -> tuple[AutoRunner, ModelMeta]:
    """A model file on the fastest of the backends that read it (and thread settings)."""
    tried = _tried(list(readers_of(path.suffix.lower())), lambda name: options.precision, options)
    return tuned(path.name, tuning.file_key(path), options, FileSource(path), tried)


register(Backend("auto", "measures the backends that run on the device (and thread counts on the CPU) for the model "
                         "and batch size, cached per machine and device; runs the fastest",
                 ("fp32", "bf16", "fp16", "int8"), _factory, default_precision=default_precision, devices=("cpu", "cuda"),
                 package="torch", tried_by_auto=False, reads_any=_read_any))
