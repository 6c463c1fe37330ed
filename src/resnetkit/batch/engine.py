"""The ``predict`` job: resolve inputs, skip what the output holds, classify batch by batch, flush parts."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TimeRemainingColumn
from rich.text import Text

from ..backends.base import RunnerOptions
from ..core.loading import Classifier, load_model
from ..core.zoo import get_spec, is_zoo_name
from ..run.classify import iter_classify
from .inputs import InputError, resolve_inputs
from .output import PartStore, result_rows


@dataclass(frozen=True)
class ModelRequest:
    """How to load the model, picklable so that Ray workers load the very same one."""

    ref: str
    weights: str | None = None
    random_weights: bool = False
    backend: str | None = None
    precision: str | None = None
    batch_size: int = 32

    def check(self) -> None:
        """Fail fast, before any output is written, on a reference that is neither a zoo name nor a file."""
        if not is_zoo_name(self.ref) and not Path(self.ref).exists():
            get_spec(self.ref)  # raises UnknownModelError with suggestions

    def load(self) -> Classifier:
        """Load the model; random weights are seeded, so every process gets the same ones."""
        if self.random_weights:
            import torch

            torch.manual_seed(0)
        return load_model(self.ref, weights=self.weights, pretrained=not self.random_weights, backend=self.backend,
                          options=RunnerOptions(batch_size=self.batch_size, precision=self.precision))


@dataclass
class PredictSummary:
    """What a predict run did."""

    output: str
    format: str
    engine: str
    inputs: int
    already_done: int
    written: int
    errors: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "images_per_s": round(self.images_per_s, 2)}

    def line(self) -> str:
        skipped = f", {self.already_done} already in the output" if self.already_done else ""
        return (f"{self.written} images labelled in {self.seconds:.1f} s ({self.images_per_s:.1f} images/s, "
                f"{self.engine}), {self.errors} unreadable{skipped}; {self.inputs} inputs -> {self.output} "
                f"({self.format} parts)")


def predict(request: ModelRequest, data: Iterable[str | os.PathLike[str]], output: str | os.PathLike[str], *,
            fmt: str | None = None, top_k: int = 5, workers: int = 2, part_size: int = 5000, resume: bool = False,
            path_column: str = "path", ray: bool = False, address: str | None = None, concurrency: int = 2,
            progress: bool | None = None) -> PredictSummary:
    """Label every image of ``data`` into part files under ``output`` (see :mod:`resnetkit.batch.output`).

    ``ray=True`` runs the classification on Ray Data (``address``: a cluster; default ``RAY_ADDRESS``
    or a local Ray for this run), with ``concurrency`` model actors; otherwise it runs here.
    """
    if address and not ray:
        raise InputError(f"--address {address} is a Ray cluster address: add --ray to run there.")
    request.check()
    sources = resolve_inputs(data, path_column)
    if not sources:
        raise InputError("No image files found in the given inputs (folders are searched for "
                         ".jpg/.png/... files; lists and tables name files).")
    store = PartStore.open(output, fmt, resume=resume, run_info={"model": request.ref, "top_k": top_k,
                                                                  "weights": request.weights,
                                                                  "random_weights": request.random_weights})
    done = store.done_sources() if resume else set()
    todo = [s for s in sources if s not in done]
    start = time.perf_counter()
    batches, engine = _run(request, todo, top_k=top_k, workers=workers, ray=ray, address=address,
                           concurrency=concurrency)
    written, errors = _write_parts(store, batches, len(todo), part_size, progress)
    return PredictSummary(str(store.path), store.format, engine, len(sources), len(sources) - len(todo),
                          written, errors, time.perf_counter() - start)


def _run(request: ModelRequest, todo: list[str], *, top_k: int, workers: int, ray: bool, address: str | None,
         concurrency: int) -> tuple[Iterator[pa.Table], str]:
    """Result tables of ``todo`` from the chosen engine, and the engine's description."""
    if not todo:
        return iter(()), "nothing left to do"
    if ray:
        from ..scale.data import ray_batches

        batches = ray_batches(request, todo, top_k=top_k, workers=workers, concurrency=concurrency, address=address)
        return batches, f"Ray Data, {concurrency} actors"
    classifier = request.load()
    chunks = iter_classify(classifier, todo, top_k=top_k, batch_size=request.batch_size, workers=workers)
    return (result_rows(chunk) for chunk in chunks), f"local, {classifier.runner.backend}/{classifier.runner.precision}"


def _write_parts(store: PartStore, batches: Iterator[pa.Table], total: int, part_size: int,
                 progress: bool | None) -> tuple[int, int]:
    """Flush ``batches`` into parts of ``part_size`` rows; returns (rows written, error rows)."""
    pending: list[pa.Table] = []
    written = errors = 0
    with _progress(progress) as bar:
        task = bar.add_task("predict", total=total)
        for table in batches:
            pending.append(table)
            errors += len(table) - table.column("error").null_count
            bar.update(task, advance=len(table))
            if sum(len(t) for t in pending) >= part_size:
                written += _flush(store, pending)
        written += _flush(store, pending)
    return written, errors


def _flush(store: PartStore, pending: list[pa.Table]) -> int:
    if not pending:
        return 0
    table = pa.concat_tables(pending)
    store.write(table)
    pending.clear()
    return len(table)


class _Rate(ProgressColumn):
    """Images per second over the bar's recent updates."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:.1f} images/s" if task.speed else "- images/s")


def _progress(enabled: bool | None) -> Progress:
    show = sys.stderr.isatty() if enabled is None else enabled
    return Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), _Rate(),
                    "ETA", TimeRemainingColumn(), disable=not show, console=Console(stderr=True))
