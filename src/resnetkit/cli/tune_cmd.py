"""``resnetkit tune MODEL``: show, refresh or clear what ``auto`` measured for a model."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ..backends import auto, tuning
from ..backends.base import RunnerOptions
from ..core.device import resolve_device, usable_cores
from ..core.errors import ResnetkitError
from ..core.zoo import is_zoo_name
from ..run.loading import load_model, tuning_key
from .app import DeviceOpt, JsonFlag, ModelArg, PrecisionOpt, app, console, default, err_console, print_json


@app.command("tune")
def tune_command(
    model: ModelArg,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Batch size to tune for.")] = 1,
    precision: PrecisionOpt = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help=default(
        "Tune for this many intra-op threads.", "try one thread and every core"))] = None,
    device: DeviceOpt = "auto",
    refresh: Annotated[bool, typer.Option("--refresh", help="Measure again, replacing the cached entry.")] = False,
    clear: Annotated[bool, typer.Option("--clear", help="Remove every cached entry of this model (all batch sizes).")] = False,
    json_output: JsonFlag = False,
) -> None:
    """Show auto's measurements for MODEL at a batch size on a device (measuring them if not cached), refresh or
    clear them.

    Zoo models are measured with random weights: speed does not depend on the weight values, so nothing is
    downloaded (there is no --random-weights: it would change nothing)."""
    if clear and refresh:
        raise ResnetkitError("--clear removes the entries and --refresh measures again: pick one (--refresh alone "
                             "replaces the entry).")
    if threads is not None and threads > usable_cores():
        err_console.print(f"note: --threads {threads} is more than the {usable_cores()} cores this process may use; "
                          "the threads will share cores and the timings show that", highlight=False)
    if clear:
        removed = tuning.clear(tuning_key(model))
        console.print(f"removed {removed} tuning entr{'y' if removed == 1 else 'ies'} of {model} from {tuning.cache_path()}",
                      highlight=False)
        return
    options = RunnerOptions(batch_size=batch_size, precision=precision, threads=threads, retune=refresh,
                            device=resolve_device(device))
    classifier = load_model(model, pretrained=not is_zoo_name(model), backend="auto", options=options)
    runner = classifier.runner
    entry = runner.tuning
    if json_output:
        # the entry's own precision and threads are those asked for; "ran" is the chosen runner's facts
        print_json({**entry.to_dict(), "cached": runner.cached, "cache": str(tuning.cache_path()),
                    "ran": classifier.ran.to_dict()})
        return
    table = Table(title=f"{model}, batch {batch_size}: auto's measurements", title_justify="left")
    for column, justify in (("candidate", "left"), ("median latency (ms)", "right"), ("", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for label, ms in sorted(entry.timings_ms.items(), key=lambda item: item[1]):
        table.add_row(label, f"{ms:.2f}", "chosen" if label == entry.choice.label else "")
    console.print(table)
    console.print(f"chosen: {classifier.ran.label()}; each candidate timed for {auto.TRIAL_SECONDS:g} s over "
                  f"{auto.TRIAL_ROUNDS} interleaved rounds after a warm-up call; a candidate over "
                  f"{auto.FIRST_ROUND_LOSER:g}x the fastest median after the first round, or {auto.CLEAR_LOSER:g}x "
                  "after a later one, was not timed in the later ones, and the rounds stopped once one was left; "
                  "candidates still tied with the fastest (overlapping 95 % CIs of the median) then raced for up to "
                  f"{auto.TIEBREAK_SECONDS:g} s more each",
                  highlight=False)
    source = "read from the cache" if runner.cached else "measured now"
    load = f", 1-minute load {entry.load_1min:.1f}" if entry.load_1min is not None else ""
    console.print(f"{source}: {tuning.cache_path()} (machine: {_measured_on(entry.machine)}{load}); "
                  "measurements on a busy machine favour fewer threads: 'resnetkit tune MODEL --refresh' when it is quiet",
                  highlight=False)


def _measured_on(machine: dict) -> str:
    """The device of a tuning entry (see :func:`resnetkit.backends.tuning.machine`): its GPU, or its CPU and cores."""
    gpu = machine.get("gpu")
    return gpu["gpu"] if gpu else f"{machine['cpu']}, {machine['cores']} cores"
