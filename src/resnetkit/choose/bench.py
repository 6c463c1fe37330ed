"""Measure accuracy vs size vs speed of models on this machine, on its CPU or a GPU (``BenchConfig.device``).

Each model is built in its own fresh process (so peak memory is that model's own and one
model's allocator or thread-pool state cannot colour the next; :mod:`.pool`), with its requested
variants and an eager fp32 reference (:mod:`.worker`). Processes are started first; then the parent asks
them for short bursts of timed calls in interleaved rounds (every live variant once per round,
one process busy at a time, so a slow spell of the machine hits all variants alike) and stops a
variant once the 95 % confidence interval of its median latency is within ``tolerance``, or at
its cap (:mod:`.adaptive`). On a GPU each variant then looks for its best throughput batch
(:mod:`.gpu`). Costs do not depend on weight values, so zoo models are measured with random weights
(offline); accuracy is the published figure unless ``eval_dir`` is given (:mod:`.accuracy`).
"""

from __future__ import annotations

import platform
import time
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..backends.base import artifact_size
from ..core.datasets import require_folder
from ..core.device import cpu_name, machine_cores, resolve_device, usable_cores
from ..core.errors import ResnetkitError
from ..core.measure import CpuMeter, count_params, load_average
from ..core.processes import process_context
from ..core.zoo import get_spec, is_zoo_name
from ..run.loading import check_model_ref
from .adaptive import Track, share_budget
from .pool import LocalWorker, ProcessWorker, Worker, WorkerDied, interrupts_held, sigterm_as_interrupt
from .records import BenchConfig, BenchInterrupted, BenchProgress, BenchRecord, Variant
from .trial_gate import CAN_PAUSE, TrialGate

__all__ = ["DEFAULT_MODELS", "BenchConfig", "BenchInterrupted", "BenchProgress", "BenchRecord", "Variant", "bench",
           "environment"]

DEFAULT_MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                  "mobilenet_v2", "shufflenet_v2_x1_0", "efficientnet_b0")

OnRecord = Callable[[BenchRecord | ResnetkitError, Variant], None]


def bench(
    models: Sequence[str] = DEFAULT_MODELS,
    config: BenchConfig = BenchConfig(),
    *,
    backends: Sequence[str | None] = (None,),
    precisions: Sequence[str | None] = (None,),
    on_record: OnRecord | None = None,
    on_progress: Callable[[BenchProgress], None] | None = None,
) -> list[BenchRecord]:
    """Measure every model x backend x precision adaptively in interleaved rounds (see the
    module docstring). ``on_record`` sees each variant when it is done, and each variant a
    backend cannot run as an error (left out of the result; raised if it was the only one).
    Ctrl-C or SIGTERM raises :class:`BenchInterrupted` carrying what was measured so far."""
    if not models:
        raise ResnetkitError("No model to measure: name at least one (see 'resnetkit models').")
    for ref in models:  # fail fast, before any process starts
        check_model_ref(ref)
    if config.eval_dir is not None:
        require_folder(config.eval_dir)
    resolve_device(config.device)  # a device this machine lacks: one clear error (each process resolves it again)
    requested = {m: [Variant(m, b, p) for b in backends for p in precisions] for m in models}
    run = _Run(config, on_record or (lambda result, variant: None), on_progress or (lambda progress: None))
    with sigterm_as_interrupt():
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


# one model's build (its process's start, auto's trial, warming up, the eager reference) took about 6 s plus 0.4 s per
# million parameters on the 2-core Zen 5 VM, the eight default models built one at a time (2026-12-06); their
# counts of modules, used before, ranked efficientnet_b0 (9 s) second of the eight, after resnet152 (29 s). Built
# two at a time, with auto's trials pausing the other build only while they time (2026-12-07), the fixed part
# shrank: the first builds of a 2-core Zen 4 fit 4 million parameters' worth (shufflenet_v2 3.8 s, resnet152
# 39.7 s), and at 6 the estimate after the first build said 39 s where 36 s were taken (at 16: 49 s), on the Zen 3
# run below 95 s where 67 s were (at 16: 119 s)
FIXED_BUILD_MPARAMS = 6.0  # the fixed part, in millions of parameters' worth


def _build_cost(model: str) -> float:
    """How long ``model`` takes to build, relative to the others (to start the longest builds first, so that short
    ones fill the end, and to estimate the time left): its parameters in millions plus a fixed part. A model file's
    parameters are guessed from its size at 4 bytes each."""
    if is_zoo_name(model):
        with torch.device("meta"):  # the architecture without allocating or initialising weights
            params = count_params(get_spec(model).build())
    else:
        path = Path(model)
        params = artifact_size(path) // 4 if path.exists() else 0
    return FIXED_BUILD_MPARAMS + params / 1e6


def builds_left_seconds(seconds_per_cost: float, pending: Sequence[float], running: Sequence[tuple[float, float]],
                        parallel: int) -> float:
    """Wall seconds until the builds end, at what the finished ones took per unit of cost: the costs of those not
    started, and of those running (``(cost, seconds since it started)``) what they still need, over ``parallel``
    builders. Counting a running build whole said 158 s after the first build on a 2-core Zen 3, this 119 s, and 67 s
    were taken: the two largest builds start together, and the second ends soon after the first; the rest of the
    gap is the cost model's (there, the small models built faster per unit of cost than the large ones)."""
    still_running = sum(max(0.0, cost * seconds_per_cost - elapsed) for cost, elapsed in running)
    return (sum(pending) * seconds_per_cost + still_running) / parallel


class _Run:
    """One bench run: the workers, the tracks of their variants, the rounds."""

    def __init__(self, config: BenchConfig, on_record: OnRecord, on_progress: Callable[[BenchProgress], None]) -> None:
        self.config, self.on_record, self.on_progress = config, on_record, on_progress
        self.workers: list[Worker] = []
        self.tracks: list[Track] = []
        self.failures: list[ResnetkitError] = []
        self.order: dict[str, int] = {}  # model -> position in the request, for the output order
        self.meter: CpuMeter | None = None  # other processes' CPU use while timing
        self.measuring_since = 0.0  # time.monotonic() when the rounds began

    def start(self, requested: dict[str, list[Variant]]) -> None:
        """Start one worker per model, longest builds first, at most one per core at a time (building is
        CPU-bound; one at a time where a trial cannot pause the others, see :mod:`.trial_gate`), before any
        timing begins."""
        self.order = {model: i for i, model in enumerate(requested)}
        if not self.config.isolate:
            for model, variants in requested.items():
                self._add(LocalWorker(model, variants, self.config))
            return
        cost = {model: _build_cost(model) for model in requested}
        pending = sorted(enumerate(requested.items()), key=lambda item: -cost[item[1][0]])
        starting: dict[ProcessWorker, float] = {}  # worker -> when it started
        built_seconds = built_cost = 0.0
        gate = TrialGate(process_context(), len(pending))  # auto's trials pause the other builds
        parallel = usable_cores() if CAN_PAUSE else 1

        def building_next() -> tuple[str, ...]:
            """The models building now and those that start as soon as a core is free for them."""
            return (*(w.model for w in starting), *(model for _, (model, _) in pending[:parallel - len(starting)]))

        self.on_progress(BenchProgress("starting", 0, 0, len(requested), building=building_next()))
        while pending or starting:
            while pending and len(starting) < parallel:
                slot, (model, variants) = pending.pop(0)
                with interrupts_held():
                    worker = ProcessWorker(model, variants, self.config, gate, slot)
                    starting[worker] = time.monotonic()
                    self.workers.append(worker)
            ready = wait([w.conn for w in starting])
            finished = {w: time.monotonic() - starting.pop(w) for w in list(starting) if w.conn in ready}
            for built, seconds in finished.items():
                built_seconds += seconds
                built_cost += cost[built.model]
                self._add(built)
                now = time.monotonic()
                eta = builds_left_seconds(built_seconds / built_cost, [cost[model] for _, (model, _) in pending],
                                          [(cost[w.model], now - since) for w, since in starting.items()], parallel)
                self.on_progress(BenchProgress("starting", 0, len(requested) - len(pending) - len(starting),
                                               len(requested), eta, last=built.model, building=building_next()))

    def _add(self, worker: Worker) -> None:
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
            tracks.append(Track(worker, index, variant, result, is_reference))
        reference = next((t for t in tracks if t.record.is_reference), None)
        for track in tracks:
            track.reference = reference
        self.tracks = sorted(self.tracks + tracks, key=lambda t: (self.order[t.variant.model], t.index))

    def measure(self) -> None:
        """Interleaved rounds until every variant is stable or capped."""
        self.meter = CpuMeter([worker.pid for worker in self.workers])
        self.measuring_since = time.monotonic()
        round_number = 0
        while active := [t for t in self.tracks if t.status is None]:
            round_number += 1
            for track in active:
                self._burst(track)
            if round_number == 1:
                share_budget(self.tracks, self.config)
            self._finish_workers()
            self.on_progress(BenchProgress("measuring", round_number, len(self.tracks) - len(active),
                                           len(self.tracks), self._eta(active)))

    def _burst(self, track: Track) -> None:
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

    def _lost(self, worker: Worker, exc: WorkerDied) -> None:
        """A measuring process died: its variants keep what was measured, marked partial."""
        self.failures.append(exc)
        self.on_record(exc, Variant(worker.model))
        for track in self.tracks:
            if track.worker is worker and track.status is None:
                track.status = "partial"
                track.record.notes.append(str(exc))

    def _finish_workers(self) -> None:
        """End the process of each model whose variants are all done (after its end-to-end timing and, on a
        GPU, its best-batch search: one process at a time, like the rounds)."""
        for worker in list(self.workers):
            mine = [t for t in self.tracks if t.worker is worker]
            if any(t.status is None for t in mine):
                continue
            try:
                for track in [t for t in mine if not t.is_reference and t.status != "partial"]:
                    if self.config.end_to_end:
                        track.end_to_end = worker.call("end_to_end", track.index)
                    track.best_batch = worker.call("best_batch", track.index)
            except WorkerDied as exc:
                self._lost(worker, exc)
            if self.meter is not None:
                self.meter.note(worker.pid)  # its last CPU time, before it ends
            worker.close()
            self.workers.remove(worker)
            for track in mine:
                if not track.is_reference:
                    self.on_record(self._result(track), track.variant)

    def _eta(self, active: Sequence[Track]) -> float:
        """The timed seconds the variants still need, times the wall seconds each timed second has taken so far
        (the pauses between bursts, the requests to the processes, their ends)."""
        timed = sum(sum(t.samples) + sum(t.throughput) for t in self.tracks) / 1000.0
        wall_per_timed = (time.monotonic() - self.measuring_since) / timed if timed else 1.0
        return sum(t.remaining_seconds(self.config) for t in active) * max(wall_per_timed, 1.0)

    def close_workers(self, wait: bool = True) -> None:
        """End the measuring processes: asked to stop, or (``wait=False``, on Ctrl-C) at once."""
        for worker in self.workers:
            worker.close(wait)
        self.workers.clear()

    def records(self) -> list[BenchRecord]:
        """One record per measured (non-reference) variant, in the requested order."""
        return [self._result(t) for t in self.tracks if not t.is_reference and t.samples]

    def _result(self, track: Track) -> BenchRecord:
        share = self.meter.foreign_share() if self.meter is not None else None
        neighbours = [rate for t in self.tracks if t.is_reference and t is not track.reference
                      for rate in [t.ms_per_gmac()] if rate is not None]
        return track.finished(self.config, machine_cores(), share, neighbours)


def environment() -> dict[str, Any]:
    """Where the numbers were measured."""
    return {"cpu": cpu_name(), "cores": usable_cores(), "torch_threads": torch.get_num_threads(),
            "torch_version": torch.__version__, "python": platform.python_version(), "platform": platform.platform()}
