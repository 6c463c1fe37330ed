"""``predict --ray``: the classification of :mod:`resnetkit.batch` as a Ray Data job.

The driver hands Ray the list of paths; an actor pool of resnetkit runners (``map_batches`` with
``concurrency`` actors, on the CPU or with ``gpus_per_actor`` GPUs each) reads, decodes and
classifies them with the same pipeline as the local engine
(:func:`resnetkit.run.classify.iter_classify`), so a missing or broken file becomes the same
error row. Result tables stream back to the driver, which writes the same atomic part files.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any, Iterator

import pyarrow as pa

from ..batch.engine import ModelRequest
from ..batch.output import result_rows
from ..run.classify import iter_classify
from ..core.errors import ResnetkitError
from .runtime import assigned_cpus, gpus_per_actor, hide_unassigned_gpus, node_cpus, ray_runtime

ROWS_PER_CALL = 4  # forward batches per actor call, so decoding overlaps inference inside the actor


class Predictor:
    """A Ray Data actor: one loaded model, run on as many CPU threads as CPUs Ray reserved for the actor (the
    request's ``threads``, else 1), called with tables of ``source`` paths."""

    def __init__(self, request: ModelRequest, top_k: int, workers: int | None) -> None:
        hide_unassigned_gpus()  # the model loads on the GPU Ray assigned this actor, else on the CPU
        self.classifier = replace(request, threads=request.threads or assigned_cpus()).load()
        self.batch_size = request.batch_size
        self.top_k = top_k
        self.workers = workers

    def __call__(self, batch: pa.Table) -> pa.Table:
        chunks = iter_classify(self.classifier, batch.column("source").to_pylist(), top_k=self.top_k,
                               batch_size=self.batch_size, workers=self.workers)
        return pa.concat_tables([result_rows(chunk) for chunk in chunks])


def map_batches_options(request: ModelRequest, *, top_k: int, workers: int | None, concurrency: int,
                        gpus_per_actor: float = 0.0) -> dict[str, Any]:
    """The keyword arguments of ``map_batches``: the actor pool of :class:`Predictor` s and what each asks Ray for
    (the request's ``threads`` CPUs, else one, and ``gpus_per_actor`` GPUs if any: fractions share a GPU)."""
    import ray.data

    options: dict[str, Any] = {
        "fn_constructor_kwargs": {"request": request, "top_k": top_k, "workers": workers},
        "batch_size": request.batch_size * ROWS_PER_CALL, "batch_format": "pyarrow", "num_cpus": request.threads or 1,
        "compute": ray.data.ActorPoolStrategy(size=concurrency)}
    if gpus_per_actor:
        options["num_gpus"] = gpus_per_actor
    return options


def ray_batches(request: ModelRequest, sources: list[str], *, top_k: int, workers: int | None, concurrency: int,
                gpus_per_actor: float = 0.0, address: str | None = None) -> Iterator[pa.Table]:
    """Result tables of ``sources`` (in no particular order) from ``concurrency`` model actors on Ray."""
    with ray_runtime(address):
        import ray.data

        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # predict shows its own
        context.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        check_actor_cpus(request.threads or 1, node_cpus())
        call_size = request.batch_size * ROWS_PER_CALL
        blocks = max(1, min(len(sources), max(concurrency, math.ceil(len(sources) / call_size))))
        dataset = ray.data.from_arrow(pa.table({"source": sources}), override_num_blocks=blocks)
        results = dataset.map_batches(Predictor, **map_batches_options(
            request, top_k=top_k, workers=workers, concurrency=concurrency, gpus_per_actor=gpus_per_actor))
        yield from results.iter_batches(batch_format="pyarrow", batch_size=None)


def check_actor_cpus(cpus: int, node_cpus: list[float]) -> None:
    """Refuse actors that ask for more CPUs than any node has: Ray Data would wait for them without end."""
    if node_cpus and cpus > max(node_cpus):
        raise ResnetkitError(f"--threads {cpus} makes each model actor ask Ray for {cpus} CPUs, and the largest node of "
                             f"this Ray has {max(node_cpus):g}: lower --threads (or add larger nodes).")


@dataclass(frozen=True)
class RayEngine:
    """The engine of :func:`resnetkit.batch.engine.predict` on Ray Data: ``concurrency`` model actors, each with
    ``gpus_per_actor`` GPUs (0: on the CPU), on the Ray at ``address`` (default ``RAY_ADDRESS``, else a local Ray
    for this run)."""

    concurrency: int = 2
    address: str | None = None
    gpus_per_actor: float | None = None  # None: 1 with --device cuda, else 0

    def __call__(self, request: ModelRequest, sources: list[str], top_k: int,
                 workers: int | None) -> tuple[Iterator[pa.Table], str, None]:
        gpus = gpus_per_actor(request.device, self.gpus_per_actor, "--gpus-per-actor")
        batches = ray_batches(request, sources, top_k=top_k, workers=workers, concurrency=self.concurrency,
                              gpus_per_actor=gpus, address=self.address)
        return batches, f"Ray Data, {self.concurrency} actors" + (f", {gpus:g} GPU each" if gpus else ""), None
