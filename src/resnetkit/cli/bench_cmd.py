"""``resnetkit bench`` (the main job) and ``resnetkit recommend``."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import time
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Callable, Iterator, Sequence

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from ..choose.bench import DEFAULT_MODELS, BenchConfig, BenchInterrupted, BenchProgress, BenchRecord, Variant, bench
from ..choose.gpu import BEST_BATCH_GAIN, BEST_BATCH_LIMIT
from ..choose.seeds import (PUBLISHED_FORMAT, SEEDS_BATCH_SIZE, SEEDS_MODELS, SEEDS_PRECISION, PublishedRow, PublishedTable,
                            read_published)
from ..core.errors import ResnetkitError
from ..core.fileio import check_writable, write_text_atomic
from ..choose.recommend import Constraints, Recommendation, accuracy_kind, recommend
from ..backends.base import get_backend
from .app import DeviceOpt, app, console, default, err_console, ms_text, print_json, styled


def _split(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


class BenchTable(str, Enum):
    """Tables ``bench --table`` prints instead of the full one."""

    seeds = "seeds"


@app.command("bench")
def bench_command(
    models: Annotated[str | None, typer.Option("--models", help=default("Comma-separated model references.", ",".join(DEFAULT_MODELS)))] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Throughput batch size (default: 16, quick: 8).")] = None,
    backends: Annotated[str | None, typer.Option("--backends", help="Comma-separated backends to compare (default: each model's default backend, as deployed).")] = None,
    precisions: Annotated[str | None, typer.Option("--precisions", help="Comma-separated precisions (fp32, fp16, bf16, int8...) (default: each backend's own; the table says what ran).")] = None,
    device: DeviceOpt = "auto",
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="Intra-op threads of every runner on the CPU, the eager reference included (default: each backend's own; auto tries 1 and every core).")] = None,
    channels_last: Annotated[bool, typer.Option("--channels-last", help="Run in channels_last memory layout.")] = False,
    end_to_end: Annotated[bool, typer.Option("--end-to-end", help="Also time JPEG decode + preprocessing + forward.")] = False,
    eval_dir: Annotated[str | None, typer.Option("--eval", help="Measure top-1/top-5 on this labelled folder with the trained weights (default: none: random weights, the published figures).")] = None,
    eval_limit: Annotated[int | None, typer.Option("--eval-limit", min=1, help="Images to evaluate with --eval (default: all).")] = None,
    tolerance: Annotated[float | None, typer.Option("--tolerance", min=0.001, max=1, help="Stop a variant once the 95 % confidence interval of its median latency is within this fraction of it (default: 0.03, quick: 0.1).")] = None,
    max_seconds: Annotated[float | None, typer.Option("--max-seconds", min=0.1, help="Cap per variant: timed batch-1 seconds (default: 8, quick: 2).")] = None,
    budget: Annotated[float | None, typer.Option("--budget", min=0, help="Timed seconds for the whole run, every variant's batch-1 and throughput calls together: where the caps would take longer (slow CPUs, many models), throughput is timed once per variant and every cap is cut by the same share, down to a tenth; the table says so (default: 40; 0: no budget).")] = None,
    reference: Annotated[bool, typer.Option("--reference/--no-reference", help="Also time eager fp32 interleaved in the same process, for the 'vs eager' column.")] = True,
    table: Annotated[BenchTable | None, typer.Option("--table", help=f"seeds: the seeds' table instead of the full one: {', '.join(SEEDS_MODELS)} at batch {SEEDS_BATCH_SIZE}, {SEEDS_PRECISION} (ms per batch, GPU MB, img/s; with --device cuda on a GPU) (default: the full table).")] = None,
    published: Annotated[str | None, typer.Option("--published", help=f"With --table seeds: print these published figures next to ours, a JSON file {PUBLISHED_FORMAT} (default: none; none ship with resnetkit).")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="A looser tolerance, a lower cap and a smaller batch: a fast, rough pass.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the records as a JSON list to stdout instead of the table.")] = False,
    output: Annotated[str | None, typer.Option("-o", "--output", help="Write the records as a JSON list to FILE (default: none).")] = None,
    csv_file: Annotated[str | None, typer.Option("--csv", help="Write the records as CSV to FILE (default: none).")] = None,
    plot: Annotated[str | None, typer.Option("--plot", help="Write top-1 vs latency (Pareto front marked) as PNG to FILE (default: none).")] = None,
    then_recommend: Annotated[bool, typer.Option("--recommend", help="Then print what 'resnetkit recommend' (no constraints) says of these records (not with --json).")] = False,
) -> None:
    """Measure params, GMACs, size, latency, throughput and memory of models on this machine, as deployed.

    Zoo models run with random weights (costs do not depend on weights; offline) unless --eval is given.

    On a GPU, calls are synchronised; GPU memory and the best batch are measured too.

    Ctrl-C (or SIGTERM) stops early: what was measured is still printed and written, marked 'partial'.
    """
    for path in filter(None, (output, csv_file, plot)):  # before the measurement, which would be lost
        check_writable(path)
    if then_recommend and json_output:
        raise ResnetkitError("--recommend prints after the table, and --json prints no table: drop one of them "
                             "(or run 'resnetkit recommend --from FILE' on a 'bench -o FILE' file).")
    if models is not None and not _split(models):
        raise ResnetkitError("--models is empty: name at least one model (see 'resnetkit models'), or leave it out "
                             "for the default ones.")
    published_table = read_published(published) if published else None
    if table is BenchTable.seeds:
        if any(v is not None for v in (models, batch_size, precisions)):
            raise ResnetkitError("--table seeds measures its own models, batch size and precision "
                                 f"({', '.join(SEEDS_MODELS)} at batch {SEEDS_BATCH_SIZE}, {SEEDS_PRECISION}); "
                                 "leave out --models, --batch-size and --precisions.")
        models, batch_size, precisions = ",".join(SEEDS_MODELS), SEEDS_BATCH_SIZE, SEEDS_PRECISION
    elif published_table is not None:
        raise ResnetkitError("--published prints published figures next to the seeds' table: add --table seeds.")
    backend_list: list[str | None] = list(_split(backends)) or [None]
    precision_list: list[str | None] = list(_split(precisions)) or [None]
    for name in filter(None, backend_list):
        get_backend(name)
    overrides = {k: v for k, v in {"batch_size": batch_size, "threads": threads, "tolerance": tolerance,
                                   "max_seconds": max_seconds}.items() if v is not None}
    if budget is not None:
        overrides["budget_seconds"] = budget or None
    overrides.update(device=device, channels_last=channels_last, end_to_end=end_to_end, eval_dir=eval_dir,
                     eval_limit=eval_limit, reference=reference)
    config = BenchConfig.quick(**overrides) if quick else BenchConfig(**overrides)
    started = time.monotonic()
    interrupted = False
    tunes = any(backend in (None, "auto") for backend in backend_list)
    with _progress_display(" (auto times its candidates on first use)" if tunes else "") as on_progress:
        try:
            records = bench(_split(models) or list(DEFAULT_MODELS), config, backends=backend_list,
                            precisions=precision_list, on_record=_report_record, on_progress=on_progress)
        except BenchInterrupted as exc:
            records, interrupted = exc.records, True
    if not records:
        if interrupted:
            err_console.print("interrupted before any variant was timed: nothing written", highlight=False)
            raise typer.Exit(130)
        raise ResnetkitError("No variant could be measured (see the messages above).")
    if json_output:
        print_json([r.to_dict() for r in records])
    elif table is BenchTable.seeds:
        _print_seeds_table(records, config, published_table, time.monotonic() - started)
    else:
        _print_table(records, config, time.monotonic() - started)
    _write_outputs(records, output, csv_file, plot, err_console if json_output else console)
    if then_recommend and not interrupted and not json_output:
        where = f"records in {output}" if output else "the records above"
        _print_recommendation(recommend(records, Constraints()), where, records)
    if interrupted:
        err_console.print(f"interrupted: kept the {len(records)} variants measured so far (status 'partial' where "
                          "a variant was cut short); run again for complete results", highlight=False)
        raise typer.Exit(130)


@contextmanager
def _progress_display(building_note: str) -> Iterator[Callable[[BenchProgress], None]]:
    """A rich progress line on a terminal (round counter, variants done, ETA); otherwise a line per step
    (``building_note`` follows the first)."""
    live = err_console.is_terminal
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[eta]}"),
                  console=err_console, transient=True, disable=not live) as bar:
        task = bar.add_task("starting", total=None, eta="")

        printed: dict[str, int] = {}

        def update(progress: BenchProgress) -> None:
            if not live:
                _print_progress(progress, printed, building_note)
            if progress.phase == "starting":
                bar.update(task, description=f"building {', '.join(progress.building) or 'models'}",
                           completed=progress.done, total=progress.total)
            else:
                eta = "" if progress.eta_seconds is None else f"ETA {_duration(progress.eta_seconds)}"
                bar.update(task, description=f"round {progress.round}: variants done", completed=progress.done,
                           total=progress.total, eta=eta)

        yield update


def _print_progress(progress: BenchProgress, printed: dict[str, int], building_note: str = "") -> None:
    """Off a terminal (e.g. output to a log): a line when the builds begin, after each model is built and after
    each variant is measured, each with the time left re-estimated from what was measured so far. ``printed``:
    phase -> the count of the last line printed (one line per change)."""
    if printed.get(progress.phase) == progress.done:
        return
    printed[progress.phase] = progress.done
    left = "" if progress.eta_seconds is None else f"; about {_duration(progress.eta_seconds)} m:ss left"
    building = ", ".join(progress.building)
    if progress.phase == "starting" and progress.last is None:
        message = f"building {progress.total} models, one process each{building_note}: {building} now"
    elif progress.phase == "starting":
        now = f"; building {building}" if building else ""
        message = f"built {progress.last} ({progress.done} of {progress.total}{now}){left} to build the rest"
    elif progress.round == 1 and progress.done == 0:
        message = f"measuring {progress.total} variants in interleaved rounds{left}"
    else:
        message = f"measured {progress.done} of {progress.total} variants{left}"
    err_console.print(message, highlight=False)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}:{secs:02d}"


def _report_record(result: BenchRecord | ResnetkitError, variant: Variant) -> None:
    if isinstance(result, ResnetkitError):
        err_console.print(f"skipped {variant.describe()}: {result}", highlight=False)
    else:
        err_console.print(f"measured {result.label}: p50 {ms_text(result.latency_ms_p50)} ms ({result.status}, "
                          f"{result.latency_runs} runs in {result.latency_rounds} rounds)", highlight=False)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ci(record: BenchRecord) -> str:
    return f"{ms_text(record.latency_ms_p50_ci[0])}-{ms_text(record.latency_ms_p50_ci[1])}" if record.latency_ms_p50_ci else "-"


Column = tuple[str, Callable[[BenchRecord], str]]  # header, cell of a record


def _columns(records: Sequence[BenchRecord], config: BenchConfig) -> list[Column]:
    """The full table's columns: on a GPU the batch time, GPU memory and best batch instead of peak RSS."""
    batch = config.batch_size
    columns: list[Column] = [
        ("model", lambda r: r.label), ("params M", lambda r: _fmt(r.params_m)), ("GMACs", lambda r: _fmt(r.gmacs)),
        ("MB fp32", lambda r: _fmt(r.size_mb_fp32, 1))]
    if any(r.file_mb is not None for r in records):  # model files: their size on disk, in what they store
        columns += [("file MB", lambda r: _fmt(r.file_mb, 2))]
    columns += [("p50 ms", lambda r: ms_text(r.latency_ms_p50)),
        ("p50 95% CI", _ci), ("runs", lambda r: f"{r.latency_runs}" + ("" if r.status == "stable" else f" ({r.status})"))]
    if any(r.on_gpu for r in records):
        columns += [(f"ms/batch @{batch}", lambda r: _fmt(r.batch_ms_p50, 1)), ("GPU MB", lambda r: _fmt(r.gpu_peak_mb, 0)),
                    (f"img/s @{batch}", lambda r: _fmt(r.throughput_ips, 1)),
                    ("best batch", lambda r: str(r.best_batch_size or "-")),
                    ("img/s @best", lambda r: _fmt(r.best_throughput_ips, 1))]
    else:
        columns += [(f"img/s @{batch}", lambda r: _fmt(r.throughput_ips, 1)), ("peak MB", lambda r: _fmt(r.peak_mem_mb, 0))]
    columns += _threads_column(records)
    columns += [("top-1", lambda r: _fmt(r.top1)), ("top-5", lambda r: _fmt(r.top5)),
                ("eager fp32 p50", lambda r: _fmt(r.reference_latency_ms_p50, 1)), ("vs eager", lambda r: r.vs_reference)]
    if config.end_to_end:
        columns += [("decode+prep ms", lambda r: _fmt(r.preprocess_ms_p50, 1)),
                    ("e2e ms", lambda r: _fmt(r.e2e_latency_ms_p50, 1))]
    return columns


def _files_note(records: Sequence[BenchRecord]) -> str:
    return "; file MB: a model file on disk, with the files written beside it" if any(
        r.file_mb is not None for r in records) else ""


def _threads_column(records: Sequence[BenchRecord]) -> list[Column]:
    """A threads column where the CPU variants ran on different thread counts (else the title says it)."""
    if len({r.threads for r in records if not r.on_gpu}) < 2:
        return []
    return [("threads", lambda r: "-" if r.on_gpu else str(r.threads))]


def _places(records: Sequence[BenchRecord]) -> str:
    """Where the records were measured: any GPU, and the CPU with its thread count when all its variants share one."""
    threads = {r.threads for r in records if not r.on_gpu}
    count = threads.pop() if len(threads) == 1 else None
    on_cpu = f", {count} thread{'s' if count > 1 else ''}" if count else ""
    places = ", ".join(dict.fromkeys(r.where + ("" if r.on_gpu else on_cpu) for r in records))
    return f"{places}, torch {records[0].torch_version}"


def _print_rows(title: str, columns: Sequence[Column], records: Sequence[BenchRecord]) -> None:
    table = Table(title=title)
    for header, _ in columns:
        table.add_column(header, justify="left" if header in ("model", "vs eager") else "right")
    for record in records:
        table.add_row(*(cell(record) for _, cell in columns))
    console.print(table)


def _print_table(records: Sequence[BenchRecord], config: BenchConfig, wall_seconds: float) -> None:
    _print_rows(f"measured on {_places(records)}", _columns(records, config), records)
    sources = sorted({r.accuracy_source for r in records})
    memory = ("" if any(r.on_gpu for r in records) else
              f"; peak MB: peak RSS of the measuring process while building and warming up the model{_baseline_note(records)}")
    console.print(
        f"latency: batch 1, median (p50) of timed runs after {config.warmup} warm-up runs, with the 95 % confidence "
        f"interval of the median; {_rounds_note(records, config)}; throughput: batch {config.batch_size}, median of "
        f"{_throughput_runs(records)}; float32 input, {records[0].memory_format}; one fresh process per model; 'eager "
        "fp32 p50' and 'vs eager': plain PyTorch fp32 timed in the same process in the same rounds ('not comparable: "
        "machine busy' when other processes used more than 25 % of the CPU while timing (Linux; elsewhere: the "
        "load average exceeded the core count); 'within noise' when the 95 % confidence intervals of the two "
        "medians overlap); GMACs counted with torch.utils.flop_counter at the model's input size; "
        f"sizes are torch.save'd state dicts (MB = 10^6 bytes){_files_note(records)}{memory}.{_gpu_note(records, config)}\n"
        f"{_load_note(records, wall_seconds)}\naccuracy: " + condensed(sources), highlight=False)


def _gpu_note(records: Sequence[BenchRecord], config: BenchConfig) -> str:
    """How the GPU figures were taken ("" without any)."""
    if not any(r.on_gpu for r in records):
        return ""
    return (f"\non the GPU: every timed call synchronised with it (before and after); timing inputs made on the GPU, "
            "so the figures are the model's own, as plain PyTorch benchmarks measure them (no copy from the host); "
            "fp32 convolutions run in TF32 where the GPU has it (PyTorch's cuDNN default); "
            "GPU MB: the most memory torch allocated on the GPU (torch.cuda.max_memory_allocated) while the built "
            f"variant ran its warm-up and a batch of {config.batch_size}, weights included; best batch: doubling from "
            f"{config.batch_size} up to {BEST_BATCH_LIMIT} while img/s rose by more than {BEST_BATCH_GAIN:.0%} "
            "or until the GPU ran out of memory (median of at least 3 runs each).")


def _print_seeds_table(records: Sequence[BenchRecord], config: BenchConfig, published: PublishedTable | None,
                       wall_seconds: float) -> None:
    """The seeds' table (ms per batch, GPU MB, img/s), with the published figures next to ours when given."""
    columns: list[Column] = [("model", lambda r: r.label), (f"ms/batch @{config.batch_size}", lambda r: _fmt(r.batch_ms_p50, 2)),
                             ("GPU MB", lambda r: _fmt(r.gpu_peak_mb, 0)), ("img/s", lambda r: _fmt(r.throughput_ips, 0)),
                             *_threads_column(records)]
    theirs = f"; published: {published.device} ({published.source})" if published else ""
    if published:
        row = lambda r: published.rows.get(r.model, PublishedRow())  # noqa: E731
        columns += [("theirs: ms/batch", lambda r: _fmt(row(r).ms_per_batch, 2)),
                    ("theirs: GPU MB", lambda r: _fmt(row(r).gpu_mb, 0)), ("theirs: img/s", lambda r: _fmt(row(r).img_s, 0))]
    size = records[0].input_size
    _print_rows(f"the seeds' table: batch {config.batch_size}, {size}x{size}, {SEEDS_PRECISION}; ours: "
                f"{_places(records)}{theirs}", columns, records)
    console.print(
        f"ours: ms/batch = median of {_throughput_runs(records, 'timed batch')} "
        f"of {config.batch_size} taken in the "
        f"interleaved rounds, img/s = {config.batch_size} / that; {_rounds_note(records, config)}."
        f"{_gpu_note(records, config)}\n{_load_note(records, wall_seconds)}", highlight=False)
    if published is None:
        console.print("theirs: the published figures (the seeds' table, an NVIDIA T4) were not given: pass them with "
                      f"--published FILE, a JSON file {PUBLISHED_FORMAT}.", highlight=False)


def condensed(texts: Sequence[str]) -> str:
    """Texts that differ in one word only, as one text listing the words: ``"a {x, y} b"``; others joined by "; "."""
    shortest = min(map(len, texts), default=0)
    prefix = os.path.commonprefix(list(texts))
    prefix = prefix[:len(prefix) - len(re.split(r"[\s(]", prefix)[-1])]  # back to the start of a word
    suffix = os.path.commonprefix([t[::-1] for t in texts])[::-1][:shortest - len(prefix)]
    suffix = suffix[len(re.match(r"\w*", suffix).group()):]  # on to the end of a word
    words = [t[len(prefix):len(t) - len(suffix)] for t in texts]
    if len(texts) < 2 or not (prefix or suffix) or not all(words) or any(" " in word for word in words):
        return "; ".join(texts)
    return f"{prefix}{{{', '.join(words)}}}{suffix}"


def _rounds_note(records: Sequence[BenchRecord], config: BenchConfig) -> str:
    stable = sum(r.status == "stable" for r in records)
    reference_cap = (f"; the eager fp32 reference at {min(config.max_seconds, config.reference_max_seconds):g} s"
                     if config.reference else "")
    return (f"adaptive: every variant timed in short bursts in interleaved rounds until its median's 95 % CI was "
            f"within +-{config.tolerance * 100:g} % (stable: {stable} of {len(records)}) or it reached "
            f"{config.max_runs} runs / {config.max_seconds:g} s (capped{reference_cap}){_budget_note(records, config)}")


def _budget_note(records: Sequence[BenchRecord], config: BenchConfig) -> str:
    """What the run's time budget cut, if it bound (see choose.adaptive.share_budget): throughput batches, caps."""
    if not config.budget_seconds:
        return ""
    share = min((r.latency_cap_seconds / config.max_seconds for r in records if r.latency_cap_seconds), default=1.0)
    fewer_batches = any(r.throughput_runs < config.throughput_runs for r in records if r.status != "partial")
    if share > 0.999 and not fewer_batches:
        return ""
    caps = f" and every cap cut to {100 * share:.0f} % of it ({config.max_seconds * share:.2g} s)" if share <= 0.999 else ""
    return (f"; those caps and {config.throughput_runs} throughput batches per variant would have taken more than "
            f"the run's budget of {config.budget_seconds:g} s of timed calls (--budget), so throughput was timed once "
            f"per variant{caps}")


def _throughput_runs(records: Sequence[BenchRecord], noun: str = "run") -> str:
    """"3 runs", "1 run" or "1-3 runs": how many throughput batches were timed per variant."""
    counts = sorted({r.throughput_runs for r in records})
    plural = "es" if noun.endswith("h") else "s"
    if len(counts) > 1:
        return f"{counts[0]}-{counts[-1]} {noun}{plural}"
    return f"{counts[0] if counts else 0} {noun}{plural if counts != [1] else ''}"


def _load_note(records: Sequence[BenchRecord], wall_seconds: float) -> str:
    loads = [v for r in records for v in (r.load_avg_before, r.load_avg_after) if v is not None]
    cores = records[0].cores
    shares = [r.other_cpu_share for r in records if r.other_cpu_share is not None]
    others = f", other processes used up to {100 * max(shares):.0f} % of the CPU" if shares else ""
    busy = " (busy: other work shared the CPU)" if any(r.load_span.busy for r in records) else ""
    where = (f"1-minute load average {min(loads):.2f}-{max(loads):.2f} during the measurements on {cores} cores{others}{busy}"
             if loads else "load average unknown")
    references = {r.model: r.reference_timed_seconds or 0.0 for r in records}
    timed = sum(r.timed_seconds or 0.0 for r in records) + sum(references.values())
    built = sum(r.build_seconds or 0.0 for r in records)
    return (f"measured in {_duration(wall_seconds)} (m:ss) in all: building and warming up the models {built:.0f} s "
            f"(wall time summed over the processes, up to one per core at a time, pauses while another one timed auto's "
            f"candidates included), their timed calls {timed:.0f} s; {where}.")


def _baseline_note(records: Sequence[BenchRecord]) -> str:
    baselines = [r.baseline_mem_mb for r in records if r.baseline_mem_mb is not None]
    if not baselines:
        return " (including everything the process loaded before it)"
    low, high = min(baselines), max(baselines)
    held = f"{low:.0f}" if round(low) == round(high) else f"{low:.0f}-{high:.0f}"
    return f", Python and torch included (the process held {held} MB before the model was built)"


def _write_outputs(records: Sequence[BenchRecord], json_file: str | None, csv_file: str | None, plot: str | None,
                   say: Console) -> None:
    rows = [r.to_dict() for r in records]
    if json_file:
        write_text_atomic(json_file, json.dumps(rows, indent=2) + "\n")
        say.print(f"wrote {json_file}", highlight=False)
    if csv_file:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(csv_file, buffer.getvalue())
        say.print(f"wrote {csv_file}", highlight=False)
    if plot:
        from ..choose.plots import plot_tradeoff

        plot_tradeoff(records, plot, f"top-1 vs latency on {records[0].cpu}")
        say.print(f"wrote {plot}", highlight=False)


def load_records(path: str) -> list[BenchRecord]:
    """Records from a ``bench -o FILE`` file, with a clear error for anything else."""
    try:
        rows = json.loads(Path(path).read_text())
        return [BenchRecord.from_dict(row) for row in rows]
    except FileNotFoundError:
        raise ResnetkitError(f"No such file: {path}. Create it with 'resnetkit bench -o {path}'.") from None
    except IsADirectoryError:
        raise ResnetkitError(f"{path} is a folder, not a 'resnetkit bench -o FILE' file.") from None
    except (json.JSONDecodeError, TypeError, AttributeError) as exc:
        raise ResnetkitError(f"{path} is not a 'resnetkit bench -o FILE' file ({exc}).") from None


@app.command("recommend")
def recommend_command(
    max_latency_ms: Annotated[float | None, typer.Option("--max-latency-ms", min=0, help="Upper bound on p50 latency at batch 1 (default: no bound).")] = None,
    max_size_mb: Annotated[float | None, typer.Option("--max-size-mb", min=0, help="Upper bound on weights size (default: no bound).")] = None,
    min_top1: Annotated[float | None, typer.Option("--min-top1", min=0, max=100, help="Lower bound on top-1 (%) (default: no bound).")] = None,
    from_file: Annotated[str | None, typer.Option("--from", help="Use a 'bench -o FILE' file instead of measuring now (default: measure now).")] = None,
    models: Annotated[str, typer.Option("--models", help="Models for the quick bench run without --from (random weights, as bench measures them).")] = ",".join(DEFAULT_MODELS),
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Models meeting every constraint, best first, with reasons, or why each was excluded; without
    constraints, one model per dataset at the knee of the measured accuracy/latency Pareto front."""
    if from_file:
        records = load_records(from_file)
    else:
        err_console.print("no --from file: running a quick bench first (resnetkit bench --quick)")
        records = bench(_split(models), BenchConfig.quick(), on_record=_report_record)
    result = recommend(records, Constraints(max_latency_ms, max_size_mb, min_top1))
    if json_output:
        print_json(result.to_dict())
    else:
        _print_recommendation(result, f"records in {from_file}" if from_file else "a quick bench run just now", records)
    if not result.recommended:
        raise typer.Exit(1)


def _print_recommendation(result: Recommendation, where: str, records: Sequence[BenchRecord]) -> None:
    loads = [v for r in records for v in (r.load_avg_before, r.load_avg_after) if v is not None]
    load = f"; load average {min(loads):.2f}-{max(loads):.2f} on {records[0].cores} cores" if loads else ""
    if result.picks or not result.constraints.any:
        _print_picks(result, f"latencies measured, top-1 as each record gives it, from {where}{load}")
        return
    console.print(f"constraints: {result.constraints.describe()} (latencies measured, top-1 as each record gives it, "
                  f"from {where}{load})", highlight=False)
    if result.recommended:
        for rank, candidate in enumerate(result.recommended, 1):
            console.print(styled(f"{rank}. ", (candidate.record.label, "bold"), f": {'; '.join(candidate.reasons)}"),
                          highlight=False)
    else:
        console.print(styled(("No model meets every constraint.", "red")))
    for candidate in result.excluded:
        console.print(f"   excluded {candidate.record.label}: {'; '.join(candidate.reasons)}", highlight=False)


def _print_picks(result: Recommendation, where: str) -> None:
    console.print(f"no constraints: one model per dataset, at the knee of its accuracy/latency Pareto front ({where})",
                  highlight=False)
    if not result.picks:
        console.print(styled(("No record has an accuracy to rank by.", "red")))
    for pick in result.picks:
        console.print(styled(f"{pick.dataset}: ", (pick.record.label, "bold"),
                             f" (p50 {pick.record.latency_ms_p50:.1f} ms, top-1 {pick.record.top1:.2f} % "
                             f"{accuracy_kind(pick.record)}): {pick.reason}"),
                      highlight=False)
        front = ", ".join(f"{r.label} {r.latency_ms_p50:.1f} ms {r.top1:.2f} %" for r in pick.front)
        console.print(f"   Pareto front, fastest first: {front}", highlight=False)
        for caveat in pick.caveats:
            console.print(f"   caution: {caveat}", highlight=False)
    if result.unscored:
        console.print(f"   not ranked (no accuracy for what ran; measure it with bench --eval DIR): "
                      f"{', '.join(r.label for r in result.unscored)}", highlight=False)
