"""The ``predict`` job: resolve inputs, skip what the output holds, classify batch by batch, flush parts."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Iterator

import pyarrow as pa
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TimeRemainingColumn
from rich.text import Text

from ..backends.base import RunnerOptions
from ..core.device import resolve_device
from ..core.fileio import as_utf8
from ..run.classify import iter_classify
from ..run.loading import Classifier, check_model_ref, load_model
from .inputs import InputError, resolve_inputs
from .output import PartStore, result_rows


@dataclass(frozen=True)
class ModelRequest:
    """How to load the model, picklable so that Ray workers load the very same one. ``device`` is a ``--device``
    word, resolved by the process that loads the model (``auto``: a GPU of that process's machine, if any)."""

    ref: str
    weights: str | None = None
    random_weights: bool = False
    backend: str | None = None
    precision: str | None = None
    batch_size: int = 32
    device: str = "auto"
    threads: int | None = None  # the runner's intra-op threads on the CPU (None: the runtime's default)

    def load(self) -> Classifier:
        """Load the model (random weights are drawn from a fixed seed, so every process gets the same ones)."""
        options = RunnerOptions(batch_size=self.batch_size, precision=self.precision,
                                device=resolve_device(self.device), threads=self.threads)
        return load_model(self.ref, weights=self.weights, pretrained=not self.random_weights, backend=self.backend,
                          options=options)


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
    ran: dict | None = None  # what ran the model (RunInfo.to_dict()) in this process; None on Ray (the actors')
    random_weights: bool = False  # the model's weights are random: its labels are meaningless

    @property
    def labelled(self) -> int:
        return self.written - self.errors

    @property
    def images_per_s(self) -> float:
        return self.labelled / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "labelled": self.labelled, "images_per_s": round(self.images_per_s, 2)}

    def line(self) -> str:
        skipped = f", {self.already_done} already in the output" if self.already_done else ""
        loading = ", loading the model included" if self.written else ""  # none is loaded when nothing is left
        return (f"{self.labelled} images labelled in {self.seconds:.1f} s of wall time{loading} "
                f"({self.images_per_s:.1f} images/s, {self.engine}), {self.errors} unreadable{skipped}; {self.inputs} "
                f"inputs -> {self.output} ({self.format} parts)"
                + ("; random weights: the labels are meaningless" if self.random_weights else ""))


# An engine classifies the sources of a request: result tables (in any order), a description of itself and, when
# the model runs in this process, what runs it (RunInfo.to_dict()).
Engine = Callable[[ModelRequest, list[str], int, int | None], tuple[Iterator[pa.Table], str, dict | None]]


def predict(request: ModelRequest, data: Iterable[str | os.PathLike[str]], output: str | os.PathLike[str], *,
            fmt: str | None = None, top_k: int = 5, workers: int | None = None, part_size: int = 5000,
            resume: bool = False, path_column: str = "path", engine: Engine | None = None,
            progress: bool | None = None) -> PredictSummary:
    """Label every image of ``data`` into part files under ``output`` (see :mod:`resnetkit.batch.output`).

    ``engine`` classifies (default: :func:`local_engine`, in this process; ``resnetkit.scale.data.RayEngine``
    runs on Ray Data), with ``workers`` decoding (None: see :func:`resnetkit.run.classify.default_workers`)."""
    check_model_ref(request.ref)
    if engine is None:  # the model runs in this process: a device it lacks fails before the output is touched
        resolve_device(request.device)
    sources = resolve_inputs(data, path_column)
    if not sources:
        raise InputError("No image files found in the given inputs (folders are searched for "
                         ".jpg/.png/... files; lists and tables name files).")
    store = PartStore.open(output, fmt, resume=resume, run_info={"model": request.ref, "top_k": top_k,
                                                                  "weights": request.weights,
                                                                  "random_weights": request.random_weights})
    done = store.done_sources() if resume else set()
    todo = [s for s in sources if as_utf8(s) not in done]  # as the rows hold them
    start = time.perf_counter()
    try:
        batches, described, ran = ((engine or local_engine)(request, todo, top_k, workers) if todo
                                   else (iter(()), "nothing left to do", None))
        written, errors = _write_parts(store, batches, len(todo), part_size, progress)
    except BaseException:
        store.discard()  # failed before its first part (no Ray cluster there, a bad model...): leave no folder
        raise
    return PredictSummary(str(store.path), store.format, described, len(sources), len(sources) - len(todo),
                          written, errors, time.perf_counter() - start, ran, request.random_weights)


def local_engine(request: ModelRequest, todo: list[str], top_k: int,
                 workers: int | None) -> tuple[Iterator[pa.Table], str, dict | None]:
    """Classify ``todo`` in this process."""
    classifier = request.load()
    chunks = iter_classify(classifier, todo, top_k=top_k, batch_size=request.batch_size, workers=workers)
    return (result_rows(chunk) for chunk in chunks), f"local, {classifier.ran.label()}", classifier.ran.to_dict()


def _write_parts(store: PartStore, batches: Iterator[pa.Table], total: int, part_size: int,
                 progress: bool | None) -> tuple[int, int]:
    """Flush ``batches`` into parts of ``part_size`` rows (the last one fewer); returns (rows written, error rows)."""
    pending: list[pa.Table] = []
    written = errors = 0
    with _progress(progress) as bar:
        task = bar.add_task("predict", total=total)
        for table in batches:
            pending.append(table)
            errors += len(table) - table.column("error").null_count
            bar.update(task, advance=len(table))
            written += _flush(store, pending, part_size)
        written += _flush(store, pending, part_size, rest=True)
    return written, errors


def _flush(store: PartStore, pending: list[pa.Table], part_size: int, rest: bool = False) -> int:
    """Write the whole parts of ``part_size`` rows that ``pending`` holds, and with ``rest`` the remaining rows as a
    last, smaller part; what is not written stays in ``pending``. Returns the rows written."""
    rows = sum(len(t) for t in pending)
    whole = rows if rest else rows - rows % part_size
    if whole == 0:
        return 0
    table = pa.concat_tables(pending)
    pending.clear()
    for offset in range(0, whole, part_size):
        store.write(table.slice(offset, min(part_size, whole - offset)))
    if whole < rows:
        pending.append(table.slice(whole))
    return whole


class _Rate(ProgressColumn):
    """Images per second over the bar's recent updates."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:.1f} images/s" if task.speed else "- images/s")


def _progress(enabled: bool | None) -> Progress:
    show = sys.stderr.isatty() if enabled is None else enabled
    return Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), _Rate(),
                    "ETA", TimeRemainingColumn(), disable=not show, console=Console(stderr=True))
