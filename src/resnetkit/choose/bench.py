"""Measure accuracy vs size vs speed of models on this machine.

Each model is built in its own fresh process (so peak memory is that model's own and one
model's allocator or thread-pool state cannot colour the next), with its requested variants
and an eager fp32 reference. Processes are started first; then the parent asks them for
short bursts of timed calls in interleaved rounds (every live variant once per round, one
process busy at a time, so a slow spell of the machine hits all variants alike) and stops a
variant once the 95 % confidence interval of its median latency is within ``tolerance``, or at
its cap. Costs do not depend on weight values, so zoo models are measured with random weights
(offline); accuracy is the published figure unless ``eval_dir`` is given.
"""

from __future__ import annotations

import io
import os
import platform
import signal
import statistics
import threading
import time
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from multiprocessing import get_all_start_methods, get_context
from multiprocessing.context import BaseContext
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from ..core.device import cpu_name, usable_cores
from ..core.errors import ResnetkitError
from ..core.measure import (CpuMeter, LoadSpan, Timing, count_macs, count_params, load_average, median_ci, median_is_stable, peak_rss_mb,
                            reset_peak_rss, serialized_size_bytes, speedup, time_calls, timing_from_samples)
from ..run.loading import Classifier, check_model_ref, load_model
from ..backends.base import RunnerOptions
from ..backends.base import TrialGate as TrialGateHook
from ..core.samples import synthetic_jpeg
from ..core.spec import ModelMeta, PublishedMetrics
from ..core.zoo import get_spec, is_zoo_name
from .trial_gate import CAN_PAUSE, TrialGate, resume_or_pause

DEFAULT_MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                  "mobilenet_v2", "shufflenet_v2_x1_0", "efficientnet_b0")
REFERENCE = ("eager", "fp32")  # the reference column: plain PyTorch in fp32
TUNED_BATCH_SIZE = 1  # auto picks each model's runtime for the headline figure, batch-1 latency


@dataclass(frozen=True)
class BenchConfig:
    """How to measure. ``quick`` trades stability for a fast rough pass."""

    batch_size: int = 16  # throughput batch
    threads: int | None = None  # None: torch's default (one per physical core)
    channels_last: bool = False
    end_to_end: bool = False
    warmup: int = 3  # untimed calls after building, per variant
    min_runs: int = 10  # latency runs before a variant may stop
    min_rounds: int = 3  # ... spread over at least this many rounds
    tolerance: float = 0.03  # stop when the 95 % CI of the median is within +-3 % of it
    max_runs: int = 200  # cap per variant
    max_seconds: float = 8.0  # cap per variant: timed batch-1 seconds (after at least min_rounds rounds)
    # ... and for the eager fp32 reference, 3-7x slower than the deployed variants: it only has to
    # settle a ratio of that size, and at 8 s it was most of the main job's timed calls
    reference_max_seconds: float = 3.0
    burst_seconds: float = 0.1  # timed calls per variant and round (at least one)
    throughput_runs: int = 3
    eval_dir: str | None = None
    eval_limit: int | None = None
    reference: bool = True  # also time eager fp32, interleaved, for the "vs eager" column
    isolate: bool = True  # a fresh process per model; False measures in this process (tests)

    @classmethod
    def quick(cls, **overrides: Any) -> "BenchConfig":
        base = cls(batch_size=8, warmup=2, min_runs=5, tolerance=0.1, max_seconds=2.0, throughput_runs=1)
        return replace(base, **overrides)


@dataclass
class BenchRecord:
    """One measured variant. Sizes in MB (10^6 bytes), times in ms, memory in MB.

    ``peak_mem_mb`` is the peak RSS of the measuring process from just before the model is
    built to the end of its warm-up (Python, torch and the model together); ``baseline_mem_mb``
    is what the process held before the model was built, so the model's own share is the
    difference. ``status``: ``stable`` (the median's 95 % CI is within the tolerance),
    ``capped`` (the per-variant cap came first) or ``partial`` (interrupted).
    """

    model: str
    backend: str
    precision: str
    params_m: float | None
    gmacs: float | None
    size_mb_fp32: float | None
    size_mb_fp16: float | None
    latency_ms_p50: float
    latency_ms_p90: float
    latency_runs: int
    throughput_ips: float | None
    batch_size: int
    throughput_runs: int
    peak_mem_mb: float
    top1: float | None
    top5: float | None
    accuracy_source: str
    accuracy_dataset: str
    published_gmacs: float | None
    input_size: int
    threads: int
    device: str
    memory_format: str
    torch_version: str
    cpu: str
    e2e_latency_ms_p50: float | None = None
    preprocess_ms_p50: float | None = None
    eval_images: int | None = None
    baseline_mem_mb: float | None = None
    status: str = "stable"
    latency_ms_p50_ci: list[float] = field(default_factory=list)  # 95 % confidence interval of the median
    latency_ms_p25: float | None = None
    latency_ms_p75: float | None = None
    latency_rounds: int = 0
    load_avg_before: float | None = None  # 1-minute load average when the variant's first round began
    load_avg_after: float | None = None  # ... and when it stopped
    cores: int | None = None
    other_cpu_share: float | None = None  # share of all cores used by other processes while measuring (Linux)
    reference_latency_ms_p50: float | None = None  # eager fp32, measured interleaved with this variant
    speedup_vs_reference: float | None = None  # None when not comparable
    vs_reference: str = ""  # "2.10x faster", "not comparable: machine busy (...)", "is the reference"
    build_seconds: float | None = None  # wall time to load the variant and warm it up, in its process
    timed_seconds: float | None = None  # wall time of its timed calls (latency and throughput)
    reference_timed_seconds: float | None = None  # ... and of its reference's (shared by a model's variants)
    notes: list[str] = field(default_factory=list)

    @property
    def load_span(self) -> LoadSpan:
        """The machine's load while this variant was measured; ``.busy`` says whether others took CPU."""
        return LoadSpan(self.load_avg_before, self.load_avg_after, self.cores or 1, self.other_cpu_share)

    @property
    def label(self) -> str:
        suffix = "" if (self.backend, self.precision) == REFERENCE else f" [{self.backend}/{self.precision}]"
        return self.model + suffix

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BenchRecord":
        """A record from :meth:`to_dict` output; keys of other resnetkit versions are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


DEFAULT_PRECISION_BOUND = 0.2  # points of top-1; the bound the default precision is held to (docs/optimize.md)


@dataclass(frozen=True)
class Variant:
    """What to measure; ``None`` leaves the choice to the model (its default backend and precision)."""

    model: str
    backend: str | None = None
    precision: str | None = None

    def describe(self) -> str:
        return f"{self.model} [{self.backend or 'default backend'}/{self.precision or 'default precision'}]"


@dataclass(frozen=True)
class BenchProgress:
    """Where a bench run is: starting processes, or measuring in rounds."""

    phase: str  # "starting" | "measuring"
    round: int
    done: int  # models started (starting) or variants finished (measuring)
    total: int
    eta_seconds: float | None = None


class BenchInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during :func:`bench`; ``records`` holds what was measured (status ``partial``)."""

    def __init__(self, records: list[BenchRecord]) -> None:
        super().__init__(f"interrupted after measuring {len(records)} variants")
        self.records = records


def bench(
    models: Sequence[str] = DEFAULT_MODELS,
    config: BenchConfig = BenchConfig(),
    *,
    backends: Sequence[str | None] = (None,),
    precisions: Sequence[str | None] = (None,),
    on_record: Callable[[BenchRecord | ResnetkitError, Variant], None] | None = None,
    on_progress: Callable[[BenchProgress], None] | None = None,
) -> list[BenchRecord]:
    """Measure every model x backend x precision adaptively in interleaved rounds (see the
    module docstring). ``on_record`` sees each variant when it is done, and each variant a
    backend cannot run as an error (left out of the result; raised if it was the only one).
    Ctrl-C or SIGTERM raises :class:`BenchInterrupted` carrying what was measured so far."""
    for ref in models:  # fail fast, before any process starts
        check_model_ref(ref)
    requested = {m: [Variant(m, b, p) for b in backends for p in precisions] for m in models}
    run = _Run(config, on_record or (lambda result, variant: None), on_progress or (lambda progress: None))
    with _sigterm_as_interrupt():
        try:
            run.start(requested)
            run.measure()
        except KeyboardInterrupt:
            run.close_workers(wait=False)
            raise BenchInterrupted(run.records()) from None
        finally:
            run.close_workers()
    if not run.tracks and len(run.failures) == 1 and sum(map(len, requested.values())) == 1:
        raise run.failures[0]
    return run.records()


@contextmanager
def _signal_handler(signum: int, handler: Any) -> Iterator[None]:
    """``handler`` for ``signum`` inside the block (main thread only: elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signum, handler)
    try:
        yield
    finally:
        signal.signal(signum, previous)


def _sigterm_as_interrupt() -> AbstractContextManager[None]:
    """SIGTERM raises KeyboardInterrupt (like Ctrl-C) while measuring, so both keep the results."""
    return _signal_handler(signal.SIGTERM, signal.default_int_handler)


@contextmanager
def _interrupts_held() -> Iterator[None]:
    """Ctrl-C or SIGTERM inside the block is raised as KeyboardInterrupt at its end: a measuring process
    being started is then always on the list of those to end. Raised in the middle of starting it, it
    left a process nobody ended, which printed a traceback once the bench had exited."""
    received: list[int] = []
    hold = lambda signum, frame: received.append(signum)  # noqa: E731
    with _signal_handler(signal.SIGINT, hold), _signal_handler(signal.SIGTERM, hold):
        yield
    if received:
        raise KeyboardInterrupt


def _sigint_ignored() -> AbstractContextManager[None]:
    """Processes started meanwhile ignore SIGINT from birth (an ignored signal stays ignored across
    exec, and Python leaves it so), so a Ctrl-C in the terminal reaches only the parent, which ends
    them cleanly, and no child prints a KeyboardInterrupt traceback while importing."""
    return _signal_handler(signal.SIGINT, signal.SIG_IGN)


class _ModelWorker:
    """The variants of one model, built in this process and timed on request."""

    def __init__(self, model: str, variants: Sequence[Variant], config: BenchConfig,
                 trial_gate: TrialGateHook | None = None) -> None:
        if config.threads:
            torch.set_num_threads(config.threads)
        self.config = config
        self.trial_gate = trial_gate
        self.classifiers: list[Classifier | None] = []
        self.entries: list[tuple[Variant, BenchRecord | ResnetkitError, bool]] = []  # (variant, record or error, is reference)
        baseline_mb = reset_peak_rss()
        for variant in variants:
            self._build(variant, baseline_mb, reference=False)
        built = [e[1] for e in self.entries if isinstance(e[1], BenchRecord)]
        if config.reference and built and not any((r.backend, r.precision) == REFERENCE for r in built):
            self._build(Variant(model, *REFERENCE), baseline_mb, reference=True)

    def _build(self, variant: Variant, baseline_mb: float | None, reference: bool) -> None:
        config = self.config
        started = time.perf_counter()
        try:
            options = RunnerOptions(batch_size=TUNED_BATCH_SIZE, precision=variant.precision, trial_gate=self.trial_gate)
            classifier = load_model(variant.model, pretrained=config.eval_dir is not None and not reference,
                                    backend=variant.backend, options=options)
        except ResnetkitError as exc:
            self.classifiers.append(None)
            self.entries.append((variant, exc, reference))
            return
        if classifier.module is not None and config.channels_last:
            classifier.module.to(memory_format=torch.channels_last)
        self.classifiers.append(classifier)
        index = len(self.classifiers) - 1
        self.time(index, "latency", config.warmup)
        self.time(index, "throughput", 0 if reference else 1)
        record = _record(variant, config, classifier, peak_rss_mb())
        record.baseline_mem_mb = baseline_mb
        record.build_seconds = time.perf_counter() - started
        if baseline_mb is None:
            record.notes.append("peak memory includes the imports before the model was built (peak RSS cannot be reset here)")
        if len(self.entries) and not reference:
            record.notes.append("peak memory includes the variants built before this one in the same process")
        if config.eval_dir and not reference:
            _add_accuracy(record, classifier, config)
        self.entries.append((variant, record, reference))

    def time(self, index: int, kind: str, calls: int) -> list[float]:
        """``calls`` timed forward passes of variant ``index`` at batch 1 (``latency``) or at
        the throughput batch size (``throughput``), in ms."""
        classifier = self.classifiers[index]
        assert classifier is not None
        batch = 1 if kind == "latency" else self.config.batch_size
        inputs = torch.randn(batch, *classifier.meta.preprocessing.input_shape)
        samples = []
        for _ in range(calls):
            t0 = time.perf_counter()
            classifier.logits(inputs)
            samples.append((time.perf_counter() - t0) * 1000.0)
        return samples

    def end_to_end(self, index: int) -> tuple[float, float]:
        classifier = self.classifiers[index]
        assert classifier is not None
        return _end_to_end(classifier, self.config)


class _LocalWorker:
    """A :class:`_ModelWorker` in this process, behind the same interface as :class:`_ProcessWorker`."""

    def __init__(self, model: str, variants: Sequence[Variant], config: BenchConfig) -> None:
        self.model = model
        self.worker = _ModelWorker(model, variants, config)
        self.pid = os.getpid()

    def entries(self) -> list[tuple[Variant, BenchRecord | ResnetkitError, bool]]:
        return self.worker.entries

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self.worker, method)(*args)

    def close(self, wait: bool = True) -> None:
        self.worker.classifiers.clear()


class WorkerDied(ResnetkitError):
    """A measuring process ended without answering (crashed or killed)."""


def _serve(conn: Any, model: str, variants: Sequence[Variant], config: BenchConfig, gate: TrialGate, slot: int) -> None:
    """Entry point of a measuring process: build, answer ``(method, args)`` requests, stop on None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and ends this process
    # ... with SIGTERM, as a normal exit: exit handlers then release what the libraries hold (e.g. the
    # multiprocessing lock tqdm makes during torch.export), which a plain SIGTERM would leave for
    # Python's resource tracker to report as leaked
    signal.signal(signal.SIGTERM, _exit_now)
    worker = _ModelWorker(model, variants, config, trial_gate=lambda: gate.timing(slot))
    gate.idle(slot)
    conn.send(worker.entries)
    while (request := conn.recv()) is not None:
        method, args = request
        conn.send(getattr(worker, method)(*args))


def _exit_now(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def process_context() -> BaseContext:
    """How measuring processes start: ``forkserver`` where the platform has it (Linux, macOS), with this
    module preloaded, so each process forks from a server that imported torch once instead of importing it
    again (2 s each here), and ends without tearing the interpreter down (1 s each; multiprocessing ends
    forked processes with ``os._exit`` after its own clean-up); else ``spawn``."""
    if "forkserver" not in get_all_start_methods():
        return get_context("spawn")
    context = get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


class _ProcessWorker:
    """A :class:`_ModelWorker` in a fresh process (see :func:`process_context`), driven over a pipe."""

    def __init__(self, model: str, variants: Sequence[Variant], config: BenchConfig, gate: TrialGate,
                 slot: int) -> None:
        context = process_context()
        self.model = model
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, model, variants, config, gate, slot), daemon=True)
        self.gate, self.slot = gate, slot
        with _sigint_ignored():
            gate.start(slot, self._start_process)
        child.close()

    def _start_process(self) -> int:
        self.process.start()
        return self.pid

    @property
    def pid(self) -> int:
        return self.process.pid or 0

    def _receive(self) -> Any:
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            self.process.join(5)
            self.gate.died(self.slot)  # a dead process keeps no one paused or waiting to time
            raise WorkerDied(f"the process measuring {self.model} ended (exit code {self.process.exitcode}) "
                             "without answering; its variants are left out. Run it alone to see why.") from None

    def entries(self) -> list[tuple[Variant, BenchRecord | ResnetkitError, bool]]:
        return self._receive()

    def call(self, method: str, *args: Any) -> Any:
        self.conn.send((method, args))
        return self._receive()

    def close(self, wait: bool = True) -> None:
        """Ask the process to stop and wait for it (``wait``), else (or if it does not) end it with
        SIGTERM, which it turns into a normal exit, and SIGKILL as a last resort (resumed, in case another
        process's trial paused it)."""
        if wait and self.process.is_alive():
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.process.join(5)
        for end in (self.process.terminate, self.process.kill):
            if self.process.is_alive():
                end()
                resume_or_pause(self.pid, "SIGCONT")
                self.process.join(5)
        self.conn.close()


@dataclass
class _Track:
    """The measurements of one variant so far (parent side)."""

    worker: _LocalWorker | _ProcessWorker
    index: int
    variant: Variant
    record: BenchRecord  # static facts from the worker; timings filled in at the end
    is_reference: bool
    reference: "_Track | None" = None
    samples: list[float] = field(default_factory=list)
    throughput: list[float] = field(default_factory=list)
    rounds: int = 0
    status: str | None = None  # None while measuring
    load_before: float | None = None
    load_after: float | None = None
    end_to_end: tuple[float, float] | None = None

    def needs_throughput(self, config: BenchConfig) -> bool:
        return not self.is_reference and len(self.throughput) < config.throughput_runs

    def update_status(self, config: BenchConfig) -> None:
        stable = (len(self.samples) >= config.min_runs and self.rounds >= config.min_rounds
                  and median_is_stable(self.samples, config.tolerance))
        capped = len(self.samples) >= config.max_runs or (
            sum(self.samples) / 1000.0 >= self.max_seconds(config) and self.rounds >= config.min_rounds)
        if (stable and not self.needs_throughput(config)) or capped:
            self.status = "stable" if stable else "capped"
            self.load_after = load_average()

    def max_seconds(self, config: BenchConfig) -> float:
        """This variant's cap in timed batch-1 seconds."""
        return min(config.max_seconds, config.reference_max_seconds) if self.is_reference else config.max_seconds

    def remaining_seconds(self, config: BenchConfig) -> float:
        """Estimated timed seconds until this variant stops: the CI of the median narrows
        like 1/sqrt(runs), so the runs needed grow with the square of (width / tolerance)."""
        if not self.samples:
            return 0.0
        ordered = sorted(self.samples)
        middle = statistics.median(ordered)
        low, high = median_ci(ordered)
        width = max(middle - low, high - middle) / middle if middle else 0.0
        needed = len(ordered) * (width / config.tolerance) ** 2 if len(ordered) >= 6 else config.min_runs
        needed = min(max(needed, config.min_runs), config.max_runs, self.max_seconds(config) * 1000.0 / middle)
        throughput = (config.throughput_runs - len(self.throughput)) * (
            statistics.median(self.throughput) if self.throughput else middle * config.batch_size)
        return max(needed - len(ordered), 0) * middle / 1000.0 + max(throughput, 0) / 1000.0 * (not self.is_reference)


def _build_cost(model: str) -> float:
    """A rough measure of how long ``model`` takes to build (exporting and converting it), to start the longest
    builds first so that short ones fill the end: the number of modules of its architecture (a model file:
    unknown, counted as the longest)."""
    if not is_zoo_name(model):
        return float("inf")
    with torch.device("meta"):  # the architecture without allocating or initialising weights
        return float(sum(1 for _ in get_spec(model).build().modules()))


class _Run:
    """One bench run: the workers, the tracks of their variants, the rounds."""

    def __init__(self, config: BenchConfig, on_record: Callable[[BenchRecord | ResnetkitError, Variant], None],
                 on_progress: Callable[[BenchProgress], None]) -> None:
        self.config, self.on_record, self.on_progress = config, on_record, on_progress
        self.workers: list[_LocalWorker | _ProcessWorker] = []
        self.tracks: list[_Track] = []
        self.failures: list[ResnetkitError] = []
        self.order: dict[str, int] = {}  # model -> position in the request, for the output order
        self.meter: CpuMeter | None = None  # other processes' CPU use while timing

    def start(self, requested: dict[str, list[Variant]]) -> None:
        """Start one worker per model, longest builds first, at most one per core at a time (building is
        CPU-bound; one at a time where a trial cannot pause the others, see :mod:`.trial_gate`), before any
        timing begins."""
        self.order = {model: i for i, model in enumerate(requested)}
        if not self.config.isolate:
            for model, variants in requested.items():
                self._add(_LocalWorker(model, variants, self.config))
            return
        pending = sorted(enumerate(requested.items()), key=lambda item: -_build_cost(item[1][0]))
        starting: list[_ProcessWorker] = []
        gate = TrialGate(process_context(), len(pending))  # auto's trials pause the other builds
        parallel = (os.cpu_count() or 1) if CAN_PAUSE else 1
        while pending or starting:
            while pending and len(starting) < parallel:
                slot, (model, variants) = pending.pop(0)
                with _interrupts_held():
                    starting.append(_ProcessWorker(model, variants, self.config, gate, slot))
                    self.workers.append(starting[-1])
            ready = wait([w.conn for w in starting])
            for worker in [w for w in starting if w.conn in ready]:
                starting.remove(worker)
                self._add(worker)
            self.on_progress(BenchProgress("starting", 0, len(requested) - len(pending) - len(starting), len(requested)))

    def _add(self, worker: _LocalWorker | _ProcessWorker) -> None:
        if worker not in self.workers:
            self.workers.append(worker)
        try:
            entries = worker.entries()
        except WorkerDied as exc:
            self.failures.append(exc)
            self.on_record(exc, Variant(worker.model))
            return
        tracks = []
        for index, (variant, result, is_reference) in enumerate(entries):
            if isinstance(result, ResnetkitError):
                if not is_reference:
                    self.failures.append(result)
                    self.on_record(result, variant)
                continue
            tracks.append(_Track(worker, index, variant, result, is_reference))
        reference = next((t for t in tracks if (t.record.backend, t.record.precision) == REFERENCE), None)
        for track in tracks:
            track.reference = reference
        self.tracks = sorted(self.tracks + tracks, key=lambda t: (self.order[t.variant.model], t.index))

    def measure(self) -> None:
        """Interleaved rounds until every variant is stable or capped."""
        self.meter = CpuMeter([worker.pid for worker in self.workers])
        round_number = 0
        while active := [t for t in self.tracks if t.status is None]:
            round_number += 1
            for track in active:
                self._burst(track)
            self._finish_workers()
            self.on_progress(BenchProgress("measuring", round_number, len(self.tracks) - len(active),
                                           len(self.tracks), self._eta(active)))

    def _burst(self, track: _Track) -> None:
        config = self.config
        if track.load_before is None:
            track.load_before = load_average()
        last = track.samples[-1] / 1000.0 if track.samples else config.burst_seconds
        calls = max(1, min(20, int(config.burst_seconds / max(last, 1e-6))))
        try:
            track.samples += track.worker.call("time", track.index, "latency", calls)
            if track.needs_throughput(config):
                track.throughput += track.worker.call("time", track.index, "throughput", 1)
        except WorkerDied as exc:
            self._lost(track.worker, exc)
            return
        if self.meter is not None:
            self.meter.note(track.worker.pid)
        track.rounds += 1
        track.update_status(config)

    def _lost(self, worker: _LocalWorker | _ProcessWorker, exc: WorkerDied) -> None:
        """A measuring process died: its variants keep what was measured, marked partial."""
        self.failures.append(exc)
        self.on_record(exc, Variant(worker.model))
        for track in self.tracks:
            if track.worker is worker and track.status is None:
                track.status = "partial"
                track.record.notes.append(str(exc))

    def _finish_workers(self) -> None:
        """End the process of each model whose variants are all done (after its end-to-end timing)."""
        for worker in list(self.workers):
            mine = [t for t in self.tracks if t.worker is worker]
            if any(t.status is None for t in mine):
                continue
            try:
                for track in mine:
                    if self.config.end_to_end and not track.is_reference and track.status != "partial":
                        track.end_to_end = worker.call("end_to_end", track.index)
            except WorkerDied as exc:
                self._lost(worker, exc)
            if self.meter is not None:
                self.meter.note(worker.pid)  # its last CPU time, before it ends
            worker.close()
            self.workers.remove(worker)
            for track in mine:
                if not track.is_reference:
                    self.on_record(self._result(track), track.variant)

    def _eta(self, active: Sequence[_Track]) -> float:
        return sum(t.remaining_seconds(self.config) for t in active)

    def close_workers(self, wait: bool = True) -> None:
        """End the measuring processes: asked to stop, or (``wait=False``, on Ctrl-C) at once."""
        for worker in self.workers:
            worker.close(wait)
        self.workers.clear()

    def records(self) -> list[BenchRecord]:
        """One record per measured (non-reference) variant, in the requested order."""
        return [self._result(t) for t in self.tracks if not t.is_reference and t.samples]

    def _result(self, track: _Track) -> BenchRecord:
        timing = timing_from_samples(track.samples, self.config.warmup)
        record = replace(
            track.record, latency_ms_p50=timing.p50_ms, latency_ms_p90=timing.p90_ms, latency_runs=timing.runs,
            latency_ms_p50_ci=list(timing.p50_ci_ms), latency_ms_p25=timing.p25_ms, latency_ms_p75=timing.p75_ms,
            latency_rounds=track.rounds, status=track.status or "partial", load_avg_before=track.load_before,
            load_avg_after=track.load_after if track.status else load_average(), cores=os.cpu_count(),
            other_cpu_share=round(share, 3) if (share := self.meter and self.meter.foreign_share()) is not None else None,
            throughput_ips=(self.config.batch_size / (statistics.median(track.throughput) / 1000.0)
                            if track.throughput else None),
            throughput_runs=len(track.throughput), notes=list(track.record.notes),
            timed_seconds=(sum(track.samples) + sum(track.throughput)) / 1000.0)
        if track.end_to_end:
            record.preprocess_ms_p50, record.e2e_latency_ms_p50 = track.end_to_end
        self._compare_with_reference(record, track, timing)
        return record

    def _compare_with_reference(self, record: BenchRecord, track: _Track, timing: Timing) -> None:
        reference = track.reference
        if reference is track:
            record.reference_latency_ms_p50, record.vs_reference = timing.p50_ms, "is the reference"
        elif reference is None or not reference.samples:
            record.vs_reference = "no eager fp32 reference" + ("" if self.config.reference else " (not requested)")
        else:
            ref_timing = timing_from_samples(reference.samples)
            loads = [v for v in (track.load_before, reference.load_before) if v is not None]
            ends = [v for v in (record.load_avg_after, reference.load_after) if v is not None]
            span = LoadSpan(max(loads, default=None), max(ends, default=None), os.cpu_count() or 1,
                            record.other_cpu_share)
            record.reference_latency_ms_p50 = ref_timing.p50_ms
            record.reference_timed_seconds = sum(reference.samples) / 1000.0
            record.speedup_vs_reference, record.vs_reference = speedup(ref_timing, timing, span)


def _record(variant: Variant, config: BenchConfig, classifier: Classifier, peak_mb: float) -> BenchRecord:
    """The static facts of a built variant; timings are filled in by the parent from its rounds."""
    meta, module = classifier.meta, classifier.module
    shape = meta.preprocessing.input_shape
    return BenchRecord(
        model=variant.model,  # as the user named it: a zoo name or the artifact's path
        backend=classifier.runner.backend,
        precision=classifier.runner.precision,
        params_m=count_params(module) / 1e6 if module is not None else None,
        gmacs=count_macs(module, shape) / 1e9 if module is not None else None,
        size_mb_fp32=serialized_size_bytes(module, torch.float32) / 1e6 if module is not None else None,
        size_mb_fp16=serialized_size_bytes(module, torch.float16) / 1e6 if module is not None else None,
        latency_ms_p50=float("nan"),
        latency_ms_p90=float("nan"),
        latency_runs=0,
        throughput_ips=None,
        batch_size=config.batch_size,
        throughput_runs=0,
        peak_mem_mb=peak_mb,
        **_published_accuracy(meta, classifier.runner.precision, default_precision=variant.precision is None),
        published_gmacs=_published_metrics(meta)[0].gmacs,
        input_size=shape[-1],
        threads=torch.get_num_threads(),
        device="cpu",
        memory_format="channels_last" if config.channels_last else "contiguous (NCHW)",
        torch_version=torch.__version__,
        cpu=cpu_name(),
    )


def _published_metrics(meta: ModelMeta) -> tuple[PublishedMetrics, str]:
    """The published figures that describe this model, and how they apply.

    A zoo model timed with random weights (costs do not depend on weight values) is reported with its
    default checkpoint's published figures, said so; artifacts and loaded weights carry their own."""
    if meta.weights == "random" and is_zoo_name(meta.arch) and meta.provenance is None:
        weights = get_spec(meta.arch).default_weights
        return weights.metrics, f" (for {weights.tag}; timed with random weights of the same architecture)"
    return meta.metrics, ""


def _published_accuracy(meta: ModelMeta, precision: str, *, default_precision: bool) -> dict[str, Any]:
    """The weights' published top-1/top-5 where they describe this variant: unmodified weights run in
    fp32, or in the default precision (bf16 where the CPU computes it natively), which resnetkit holds to
    0.2 points of fp32 (measured on the CIFAR-10 ResNets, docs/optimize.md); said so in the source."""
    metrics, applies = _published_metrics(meta)
    if metrics.top1 is None:
        source = "none published for these weights (measure with --eval DIR)"
    elif precision == "fp32":
        return {"top1": metrics.top1, "top5": metrics.top5, "accuracy_source": f"published: {metrics.source}{applies}",
                "accuracy_dataset": metrics.dataset}
    elif precision == "bf16" and default_precision:
        return {"top1": metrics.top1, "top5": metrics.top5, "accuracy_dataset": metrics.dataset,
                "accuracy_source": f"published for fp32: {metrics.source}{applies}; ran bf16, the default precision "
                                   f"(within {DEFAULT_PRECISION_BOUND} points of fp32 on the CIFAR-10 ResNets; "
                                   "check with --eval DIR)"}
    else:
        source = (f"not measured: the published {metrics.top1:.2f} % is for fp32 and this variant ran {precision} "
                  "(measure with --eval DIR)")
    return {"top1": None, "top5": None, "accuracy_source": source, "accuracy_dataset": metrics.dataset}


def _end_to_end(classifier: Classifier, config: BenchConfig) -> tuple[float, float]:
    """p50 of (JPEG decode + preprocessing) and of (decode + preprocessing + forward) at batch 1,
    timed after the rounds (at least ``min_runs`` calls and 1 s each)."""
    data = synthetic_jpeg()
    prepare = lambda: classifier.prepare(data).unsqueeze(0)  # noqa: E731
    seconds = min(1.0, config.max_seconds)
    pre = time_calls(prepare, warmup=config.warmup, min_runs=config.min_runs, min_seconds=seconds)
    full = time_calls(lambda: classifier.logits(prepare()), warmup=config.warmup, min_runs=config.min_runs,
                      min_seconds=seconds)
    return pre.p50_ms, full.p50_ms


def _add_accuracy(record: BenchRecord, classifier: Classifier, config: BenchConfig) -> None:
    from ..run.evaluate import evaluate

    report = evaluate(classifier, config.eval_dir, limit=config.eval_limit, progress=False)
    record.top1, record.top5, record.eval_images = report.top1, report.top5, report.n_images
    record.accuracy_source = f"measured on {config.eval_dir} ({report.n_images} images)"
    record.accuracy_dataset = str(config.eval_dir)


def environment() -> dict[str, Any]:
    """Where the numbers were measured."""
    return {"cpu": cpu_name(), "cores": usable_cores(), "torch_threads": torch.get_num_threads(),
            "torch_version": torch.__version__, "python": platform.python_version(), "platform": platform.platform()}
