"""``resnetkit bench`` (the main job) and ``resnetkit recommend``."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Callable, Iterator, Sequence

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from ..choose.bench import DEFAULT_MODELS, BenchConfig, BenchInterrupted, BenchProgress, BenchRecord, Variant, bench
from ..core.errors import ResnetkitError
from ..core.fileio import write_text_atomic
from ..choose.recommend import Constraints, Recommendation, recommend
from ..backends.base import get_backend
from .app import app, console, err_console, print_json, styled


def _split(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


@app.command("bench")
def bench_command(
    models: Annotated[str, typer.Option("--models", help="Comma-separated model references.")] = ",".join(DEFAULT_MODELS),
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Throughput batch size (default: 16, quick: 8).")] = None,
    backends: Annotated[str | None, typer.Option("--backends", help="Comma-separated backends to compare (default: each model's default backend, as deployed).")] = None,
    precisions: Annotated[str | None, typer.Option("--precisions", help="Comma-separated precisions (fp32, fp16, bf16, int8...) (default: each backend's own; the table says what ran).")] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="torch intra-op threads (default: torch's).")] = None,
    channels_last: Annotated[bool, typer.Option("--channels-last", help="Run in channels_last memory layout.")] = False,
    end_to_end: Annotated[bool, typer.Option("--end-to-end", help="Also time JPEG decode + preprocessing + forward.")] = False,
    eval_dir: Annotated[str | None, typer.Option("--eval", help="Measure top-1/top-5 on this labelled folder (needs weights; default: none, the published figures).")] = None,
    eval_limit: Annotated[int | None, typer.Option("--eval-limit", min=1, help="Images to evaluate with --eval (default: all).")] = None,
    tolerance: Annotated[float | None, typer.Option("--tolerance", min=0.001, max=1, help="Stop a variant once the 95 % confidence interval of its median latency is within this fraction of it (default: 0.03, quick: 0.1).")] = None,
    max_seconds: Annotated[float | None, typer.Option("--max-seconds", min=0.1, help="Cap per variant: timed batch-1 seconds (default: 8, quick: 2).")] = None,
    reference: Annotated[bool, typer.Option("--reference/--no-reference", help="Also time eager fp32 interleaved in the same process, for the 'vs eager' column.")] = True,
    quick: Annotated[bool, typer.Option("--quick", help="A looser tolerance, a lower cap and a smaller batch: a fast, rough pass.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the records as a JSON list to stdout instead of the table.")] = False,
    output: Annotated[str | None, typer.Option("-o", "--output", help="Write the records as a JSON list to FILE (default: none).")] = None,
    csv_file: Annotated[str | None, typer.Option("--csv", help="Write the records as CSV to FILE (default: none).")] = None,
    plot: Annotated[str | None, typer.Option("--plot", help="Write top-1 vs latency (Pareto front marked) as PNG to FILE (default: none).")] = None,
    then_recommend: Annotated[bool, typer.Option("--recommend", help="Then print what 'resnetkit recommend' (no constraints) says of these records (not with --json).")] = False,
) -> None:
    """Measure params, GMACs, size, latency, throughput and memory of models on this machine, as deployed.

    Ctrl-C (or SIGTERM) stops early: what was measured is still printed and written, marked 'partial'.
    """
    backend_list: list[str | None] = list(_split(backends)) or [None]
    precision_list: list[str | None] = list(_split(precisions)) or [None]
    for name in filter(None, backend_list):
        get_backend(name)
    overrides = {k: v for k, v in {"batch_size": batch_size, "threads": threads, "tolerance": tolerance,
                                   "max_seconds": max_seconds}.items() if v is not None}
    overrides.update(channels_last=channels_last, end_to_end=end_to_end, eval_dir=eval_dir, eval_limit=eval_limit,
                     reference=reference)
    config = BenchConfig.quick(**overrides) if quick else BenchConfig(**overrides)
    started = time.monotonic()
    interrupted = False
    with _progress_display() as on_progress:
        try:
            records = bench(_split(models), config, backends=backend_list, precisions=precision_list,
                            on_record=_report_record, on_progress=on_progress)
        except BenchInterrupted as exc:
            records, interrupted = exc.records, True
    if not records:
        if interrupted:
            err_console.print("interrupted before any variant was timed: nothing written", highlight=False)
            raise typer.Exit(130)
        raise ResnetkitError("No variant could be measured (see the messages above).")
    if json_output:
        print_json([r.to_dict() for r in records])
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
def _progress_display() -> Iterator[Callable[[BenchProgress], None]]:
    """A rich progress line on a terminal (round counter, variants done, ETA); otherwise one
    line when the timing rounds begin."""
    live = err_console.is_terminal
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[eta]}"),
                  console=err_console, transient=True, disable=not live) as bar:
        task = bar.add_task("starting", total=None, eta="")

        def update(progress: BenchProgress) -> None:
            if not live and progress.phase == "measuring" and progress.round == 1:
                err_console.print(f"measuring {progress.total} variants in interleaved rounds (first estimate: "
                                  f"{_duration(progress.eta_seconds or 0)} m:ss)", highlight=False)
            if progress.phase == "starting":
                bar.update(task, description="building models (one process each)", completed=progress.done,
                           total=progress.total)
            else:
                eta = "" if progress.eta_seconds is None else f"ETA {_duration(progress.eta_seconds)}"
                bar.update(task, description=f"round {progress.round}: variants done", completed=progress.done,
                           total=progress.total, eta=eta)

        yield update


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}:{secs:02d}"


def _report_record(result: BenchRecord | ResnetkitError, variant: Variant) -> None:
    if isinstance(result, ResnetkitError):
        err_console.print(f"skipped {variant.describe()}: {result}", highlight=False)
    else:
        err_console.print(f"measured {result.label}: p50 {result.latency_ms_p50:.1f} ms ({result.status}, "
                          f"{result.latency_runs} runs in {result.latency_rounds} rounds)", highlight=False)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ci(record: BenchRecord) -> str:
    return f"{record.latency_ms_p50_ci[0]:.1f}-{record.latency_ms_p50_ci[1]:.1f}" if record.latency_ms_p50_ci else "-"


def _print_table(records: Sequence[BenchRecord], config: BenchConfig, wall_seconds: float) -> None:
    first = records[0]
    table = Table(title=f"measured on {first.cpu}, {first.threads} threads, torch {first.torch_version}")
    columns = ["model", "params M", "GMACs", "MB fp32", "p50 ms", "p50 95% CI", "runs", f"img/s @{config.batch_size}",
               "peak MB", "top-1", "top-5", "eager fp32 p50", "vs eager"]
    if config.end_to_end:
        columns += ["decode+prep ms", "e2e ms"]
    for column in columns:
        table.add_column(column, justify="left" if column in ("model", "vs eager") else "right")
    for r in records:
        row = [r.label, _fmt(r.params_m), _fmt(r.gmacs), _fmt(r.size_mb_fp32, 1), _fmt(r.latency_ms_p50, 1), _ci(r),
               f"{r.latency_runs}" + ("" if r.status == "stable" else f" ({r.status})"), _fmt(r.throughput_ips, 1),
               _fmt(r.peak_mem_mb, 0), _fmt(r.top1), _fmt(r.top5), _fmt(r.reference_latency_ms_p50, 1), r.vs_reference]
        if config.end_to_end:
            row += [_fmt(r.preprocess_ms_p50, 1), _fmt(r.e2e_latency_ms_p50, 1)]
        table.add_row(*row)
    console.print(table)
    sources = sorted({r.accuracy_source for r in records})
    console.print(
        f"latency: batch 1, median (p50) of timed runs after {config.warmup} warm-up runs, with the 95 % confidence "
        f"interval of the median; {_rounds_note(records, config)}; throughput: batch {config.batch_size}, median of "
        f"{config.throughput_runs} runs; float32 input, {first.memory_format}; one fresh process per model; 'eager "
        "fp32 p50' and 'vs eager': plain PyTorch fp32 timed in the same process in the same rounds ('not comparable: "
        "machine busy' when other processes used more than 25 % of the CPU while timing (Linux; elsewhere: the "
        "load average exceeded the core count) or the runs' spread, the mean interquartile "
        "range, exceeds the difference); GMACs counted with torch.utils.flop_counter at the model's input size; "
        "sizes are torch.save'd state dicts (MB = 10^6 bytes); peak MB: peak RSS of the measuring process while "
        f"building and warming up the model{_baseline_note(records)}.\n{_load_note(records, wall_seconds)}\n"
        "accuracy: " + condensed(sources), highlight=False)


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
            f"{config.max_runs} runs / {config.max_seconds:g} s (capped{reference_cap})")


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
    except (json.JSONDecodeError, TypeError, AttributeError) as exc:
        raise ResnetkitError(f"{path} is not a 'resnetkit bench -o FILE' file ({exc}).") from None


@app.command("recommend")
def recommend_command(
    max_latency_ms: Annotated[float | None, typer.Option("--max-latency-ms", min=0, help="Upper bound on p50 latency at batch 1 (default: no bound).")] = None,
    max_size_mb: Annotated[float | None, typer.Option("--max-size-mb", min=0, help="Upper bound on weights size (default: no bound).")] = None,
    min_top1: Annotated[float | None, typer.Option("--min-top1", min=0, max=100, help="Lower bound on top-1 (%) (default: no bound).")] = None,
    from_file: Annotated[str | None, typer.Option("--from", help="Use a 'bench -o FILE' file instead of measuring now (default: measure now).")] = None,
    models: Annotated[str, typer.Option("--models", help="Models for the quick bench run without --from.")] = ",".join(DEFAULT_MODELS),
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
        _print_picks(result, f"measured numbers from {where}{load}")
        return
    console.print(f"constraints: {result.constraints.describe()} (measured numbers from {where}{load})", highlight=False)
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
                             f" (p50 {pick.record.latency_ms_p50:.1f} ms, top-1 {pick.record.top1:.2f} %): {pick.reason}"),
                      highlight=False)
        front = ", ".join(f"{r.label} {r.latency_ms_p50:.1f} ms {r.top1:.2f} %" for r in pick.front)
        console.print(f"   Pareto front, fastest first: {front}", highlight=False)
        for caveat in pick.caveats:
            console.print(f"   caution: {caveat}", highlight=False)
    if result.unscored:
        console.print(f"   not ranked (no accuracy for what ran; measure it with bench --eval DIR): "
                      f"{', '.join(r.label for r in result.unscored)}", highlight=False)
