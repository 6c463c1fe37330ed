"""``resnetkit bench`` (the main job) and ``resnetkit recommend``."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Annotated, Sequence

import typer
from rich.table import Table

from ..choose.bench import DEFAULT_MODELS, BenchConfig, BenchRecord, Variant, bench
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
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Throughput batch size [default: 16, quick: 8].")] = None,
    backends: Annotated[str | None, typer.Option("--backends", help="Comma-separated backends to compare [default: each model's own: eager for PyTorch models, the file's runtime for exported ones].")] = None,
    precisions: Annotated[str | None, typer.Option("--precisions", help="Comma-separated precisions (fp32, fp16, bf16, int8...) [default: each backend's own; the table says what ran].")] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="torch intra-op threads [default: torch's].")] = None,
    channels_last: Annotated[bool, typer.Option("--channels-last", help="Run in channels_last memory layout.")] = False,
    end_to_end: Annotated[bool, typer.Option("--end-to-end", help="Also time JPEG decode + preprocessing + forward.")] = False,
    eval_dir: Annotated[str | None, typer.Option("--eval", help="Measure top-1/top-5 on this labelled folder (needs weights).")] = None,
    eval_limit: Annotated[int | None, typer.Option("--eval-limit", min=1, help="Images to evaluate with --eval.")] = None,
    processes: Annotated[int | None, typer.Option("--processes", min=1, help="Fresh processes per model, in interleaved rounds; the table shows medians and the p50 range [default: 3, quick: 1].")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Fewer runs, one process per model and a smaller batch: a fast, rough pass.")] = False,
    json_file: Annotated[str | None, typer.Option("--json", help="Write the records as a JSON list to FILE.")] = None,
    csv_file: Annotated[str | None, typer.Option("--csv", help="Write the records as CSV to FILE.")] = None,
    plot: Annotated[str | None, typer.Option("--plot", help="Write top-1 vs latency (Pareto front marked) as PNG.")] = None,
) -> None:
    """Measure params, GMACs, size, latency, throughput and memory of models on this machine."""
    backend_list: list[str | None] = list(_split(backends)) or [None]
    precision_list: list[str | None] = list(_split(precisions)) or [None]
    for name in filter(None, backend_list):
        get_backend(name)
    overrides = {k: v for k, v in {"batch_size": batch_size, "threads": threads, "processes": processes}.items()
                 if v is not None}
    overrides.update(channels_last=channels_last, end_to_end=end_to_end, eval_dir=eval_dir, eval_limit=eval_limit)
    config = BenchConfig.quick(**overrides) if quick else BenchConfig(**overrides)
    records = bench(_split(models), config, backends=backend_list, precisions=precision_list, on_record=_report_progress)
    if not records:
        raise ResnetkitError("No variant could be measured (see the messages above).")
    _print_table(records, config)
    _write_outputs(records, json_file, csv_file, plot)


def _report_progress(result: BenchRecord | ResnetkitError, variant: Variant) -> None:
    if isinstance(result, ResnetkitError):
        err_console.print(f"skipped {variant.describe()}: {result}", highlight=False)
    else:
        err_console.print(f"measured {result.label}: p50 {result.latency_ms_p50:.1f} ms", highlight=False)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _print_table(records: Sequence[BenchRecord], config: BenchConfig) -> None:
    first = records[0]
    table = Table(title=f"measured on {first.cpu}, {first.threads} threads, torch {first.torch_version}")
    ranges = config.processes > 1
    columns = ["model", "params M", "GMACs", "MB fp32", "MB fp16", "p50 ms", *(["p50 range"] if ranges else []),
               "p90 ms", f"img/s @{config.batch_size}", "peak MB", "top-1", "top-5"]
    if config.end_to_end:
        columns += ["decode+prep ms", "e2e ms"]
    for column in columns:
        table.add_column(column, justify="left" if column == "model" else "right")
    for r in records:
        spread = [f"{min(r.latency_ms_p50_per_process):.1f}-{max(r.latency_ms_p50_per_process):.1f}"] if ranges else []
        row = [r.label, _fmt(r.params_m), _fmt(r.gmacs), _fmt(r.size_mb_fp32, 1), _fmt(r.size_mb_fp16, 1),
               _fmt(r.latency_ms_p50, 1), *spread, _fmt(r.latency_ms_p90, 1), _fmt(r.throughput_ips, 1),
               _fmt(r.peak_mem_mb, 0), _fmt(r.top1), _fmt(r.top5)]
        if config.end_to_end:
            row += [_fmt(r.preprocess_ms_p50, 1), _fmt(r.e2e_latency_ms_p50, 1)]
        table.add_row(*row)
    console.print(table)
    sources = sorted({r.accuracy_source for r in records})
    console.print(
        f"latency: batch 1, median and 90th percentile of >= {config.min_runs} timed runs (>= {config.min_seconds:g} s) "
        f"after {config.warmup} warm-up runs; throughput: batch {config.batch_size}, median of >= {config.throughput_runs} runs; "
        f"float32 input, {first.memory_format}; {_processes_note(config)}; GMACs counted with torch.utils.flop_counter "
        f"at the model's input size; sizes are torch.save'd state dicts (MB = 10^6 bytes); peak MB: peak RSS of the "
        f"measuring process while building and running the model{_baseline_note(records)}.\naccuracy: " + "; ".join(sources),
        highlight=False)


def _processes_note(config: BenchConfig) -> str:
    if config.processes == 1:
        return "one fresh process per model (batch-1 latency can differ between processes: use --processes 3)"
    return (f"each model measured in {config.processes} fresh processes in interleaved rounds: p50, p90 and img/s are "
            "the medians over the processes, p50 range the lowest and highest process p50")


def _baseline_note(records: Sequence[BenchRecord]) -> str:
    baselines = [r.baseline_mem_mb for r in records if r.baseline_mem_mb is not None]
    if not baselines:
        return " (including everything the process loaded before it)"
    low, high = min(baselines), max(baselines)
    held = f"{low:.0f}" if round(low) == round(high) else f"{low:.0f}-{high:.0f}"
    return f", Python and torch included (the process held {held} MB before the model was built)"


def _write_outputs(records: Sequence[BenchRecord], json_file: str | None, csv_file: str | None, plot: str | None) -> None:
    rows = [r.to_dict() for r in records]
    if json_file:
        write_text_atomic(json_file, json.dumps(rows, indent=2) + "\n")
        console.print(f"wrote {json_file}")
    if csv_file:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(csv_file, buffer.getvalue())
        console.print(f"wrote {csv_file}")
    if plot:
        from ..choose.plots import plot_tradeoff

        plot_tradeoff(records, plot, f"top-1 vs latency on {records[0].cpu}")
        console.print(f"wrote {plot}")


def load_records(path: str) -> list[BenchRecord]:
    """Records from a ``bench --json`` file, with a clear error for anything else."""
    try:
        rows = json.loads(Path(path).read_text())
        return [BenchRecord(**row) for row in rows]
    except FileNotFoundError:
        raise ResnetkitError(f"No such file: {path}. Create it with 'resnetkit bench --json {path}'.") from None
    except (json.JSONDecodeError, TypeError, AttributeError) as exc:
        raise ResnetkitError(f"{path} is not a 'resnetkit bench --json' file ({exc}).") from None


@app.command("recommend")
def recommend_command(
    max_latency_ms: Annotated[float | None, typer.Option("--max-latency-ms", min=0, help="Upper bound on p50 latency at batch 1.")] = None,
    max_size_mb: Annotated[float | None, typer.Option("--max-size-mb", min=0, help="Upper bound on weights size.")] = None,
    min_top1: Annotated[float | None, typer.Option("--min-top1", min=0, max=100, help="Lower bound on top-1 (%).")] = None,
    from_file: Annotated[str | None, typer.Option("--from", help="Use a 'bench --json' file instead of measuring now.")] = None,
    models: Annotated[str, typer.Option("--models", help="Models for the quick bench run without --from.")] = ",".join(DEFAULT_MODELS),
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Models meeting every constraint, best first, with reasons; or why each was excluded."""
    if from_file:
        records = load_records(from_file)
    else:
        err_console.print("no --from file: running a quick bench first (resnetkit bench --quick)")
        records = bench(_split(models), BenchConfig.quick(), on_record=_report_progress)
    result = recommend(records, Constraints(max_latency_ms, max_size_mb, min_top1))
    if json_output:
        print_json(result.to_dict())
    else:
        _print_recommendation(result, from_file)
    if not result.recommended:
        raise typer.Exit(1)


def _print_recommendation(result: Recommendation, source: str | None) -> None:
    where = f"records in {source}" if source else "a quick bench run just now"
    console.print(f"constraints: {result.constraints.describe()} (measured numbers from {where})", highlight=False)
    if result.recommended:
        for rank, candidate in enumerate(result.recommended, 1):
            console.print(styled(f"{rank}. ", (candidate.record.label, "bold"), f": {'; '.join(candidate.reasons)}"),
                          highlight=False)
    else:
        console.print(styled(("No model meets every constraint.", "red")))
    for candidate in result.excluded:
        console.print(f"   excluded {candidate.record.label}: {'; '.join(candidate.reasons)}", highlight=False)
