"""``resnetkit finetune | train | distill``: thin commands over :mod:`resnetkit.train`.

The three commands share one option table; each adds its own leading arguments. A command
is a function whose signature is built from those parameters, so Typer sees ordinary options.
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any, Callable

import typer

from ..train import TrainConfig, TrainingInterrupted, resume, run
from ..train.checkpoint import load_resumable
from ..train.distill import distill_with_baseline
from ..train.distributed import launched_rank
from .app import app, console, err_console, print_json

# Defaults where they differ from TrainConfig's: training from random weights needs a higher learning
# rate, more epochs and more weight decay than fine-tuning. A distilled student takes the defaults
# of how it starts (--scratch or not) and trains all its layers.
FROM_WEIGHTS = {"mode": "last-stage", "epochs": 10, "lr": 0.01}
FROM_SCRATCH = {"mode": "full", "epochs": 30, "lr": 0.1, "weight_decay": 5e-4, "pretrained": False}


def _param(name: str, annotation: Any, default: Any = None) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def _opt(kind: Any, *flags: str, help: str, **extra: Any) -> Any:
    return Annotated[kind, typer.Option(*flags, help=help, **extra)]


MODEL = _param("model", Annotated[str | None, typer.Argument(
    help="Zoo name (see 'resnetkit models') or a resnetkit model file, e.g. a previous run's best.pt.", show_default=False)])
DATA = _param("data_dir", Annotated[str | None, typer.Argument(
    help="Folder with one sub-folder of images per class, or with train/ and val/ such folders.", show_default=False)])
MODE = _param("mode", _opt(str | None, "--mode", help="What trains: head | last-stage | full. (default: last-stage)"))
HEAD_LR = _param("head_lr", _opt(float | None, "--head-lr", help="Peak learning rate of the classifier layer. (default: 10 x --lr for a new head, else --lr)"))
TEACHER = _param("teacher", _opt(str | None, "--teacher", help="Teacher model reference (frozen, eval mode)."))
STUDENT = _param("model", _opt(str | None, "--student", help="Student model reference."))
DISTILL_OPTIONS = [
    _param("temperature", _opt(float, "--temperature", help="Softmax temperature T of the KL term."), 4.0),
    _param("alpha", _opt(float, "--alpha", help="Weight of the KL term; 1 - alpha weights cross-entropy."), 0.5),
    _param("scratch", _opt(bool, "--scratch", help="Start the student from random weights instead of its pretrained ones."), False),
    _param("baseline", _opt(bool, "--baseline/--no-baseline", help="Also train the student without the teacher and compare."), True),
]
COMMON = [
    _param("out_dir", _opt(str | None, "-o", "--output", help="Run folder: best.pt, last.pt, metrics.csv/json, curves.png.")),
    _param("epochs", _opt(int | None, "--epochs", min=1, help="Epochs to train (default: 10 from weights, 30 from scratch). With --resume: extend the run to this many.")),
    _param("lr", _opt(float | None, "--lr", help="Peak learning rate; when fine-tuning, of the pretrained layers that train (default: 0.01 from weights, 0.1 from scratch).")),
    _param("batch_size", _opt(int, "--batch-size", min=1, help="Images per step and process."), 64),
    _param("accum_steps", _opt(int, "--accum-steps", min=1, help="Batches per optimizer step (gradient accumulation)."), 1),
    _param("optimizer", _opt(str, "--optimizer", help="sgd (Nesterov momentum 0.9) | adamw."), "sgd"),
    _param("weight_decay", _opt(float | None, "--weight-decay", help="Weight decay (not on biases/norms) (default: 1e-4 from weights, 5e-4 from scratch).")),
    _param("label_smoothing", _opt(float, "--label-smoothing", help="Label smoothing of the cross-entropy."), 0.0),
    _param("schedule", _opt(str, "--schedule", help="cosine | onecycle (30 % warm-up from lr/25)."), "cosine"),
    _param("warmup_epochs", _opt(float, "--warmup-epochs", help="Linear warm-up length in epochs (overrides the schedule's)."), 0.0),
    _param("clip_grad", _opt(float | None, "--clip-grad", help="Clip the global gradient norm to this value.")),
    _param("amp", _opt(bool, "--amp", help="Mixed precision: bf16 autocast on CPU, fp16 + gradient scaler on CUDA."), False),
    _param("channels_last", _opt(bool, "--channels-last", help="Channels-last memory format."), False),
    _param("val_dir", _opt(str | None, "--val", help="Validation folder (default: DATA_DIR/val if present).")),
    _param("val_split", _opt(float | None, "--val-split", help="Fraction of each class held out when there is no validation folder (default: 0.1; 0 = none).")),
    _param("early_stop", _opt(int | None, "--early-stop", min=1, help="Stop after this many epochs without a better validation accuracy.")),
    _param("augment", _opt(str, "--augment", help="standard (crop + flip for the model's input size) | none."), "standard"),
    _param("workers", _opt(int, "--workers", min=0, help="Data-loading processes."), 0),
    _param("seed", _opt(int, "--seed", help="Seed of initialisation, split, shuffling and augmentation."), 0),
    _param("device", _opt(str, "--device", help="auto | cpu | cuda | cuda:N."), "auto"),
    _param("resume", _opt(str | None, "--resume", help="Continue the run in this folder exactly where it stopped (its saved settings are used).")),
    _param("json_output", _opt(bool, "--json", help="Print the run summary as JSON."), False),
]


def _config(task: str, options: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from the command's options; ``None`` takes the task's default."""
    if not options.get("model") or not options.get("data_dir") or not options.get("out_dir"):
        what = "--teacher, --student, DATA_DIR" if task == "distill" else "MODEL, DATA_DIR"
        raise typer.BadParameter(f"{task} needs {what} and -o RUN_DIR (or --resume RUN_DIR).")
    options = dict(options)
    scratch = task == "train" or options.pop("scratch", False)
    defaults = {**(FROM_SCRATCH if scratch else FROM_WEIGHTS), **({"mode": "full"} if task == "distill" else {})}
    given = {k: v for k, v in options.items() if v is not None}
    return TrainConfig(task=task, **{**defaults, **given})


def _launch(task: str, options: dict[str, Any]) -> None:
    try:
        _start(task, options)
    except TrainingInterrupted as exc:
        if launched_rank() == 0:
            err_console.print(str(exc), highlight=False)
        raise typer.Exit(exc.exit_code) from None


def _start(task: str, options: dict[str, Any]) -> None:
    run_dir, json_output, with_baseline = options.pop("resume"), options.pop("json_output"), options.pop("baseline", False)
    config = _saved_config(run_dir, options["epochs"]) if run_dir else _config(task, options)
    if config.task == "distill" and with_baseline:
        result = distill_with_baseline(config, resuming=bool(run_dir))
    else:  # with --resume, also the baseline folder of a distillation
        result = resume(run_dir, epochs=config.epochs) if run_dir else run(config)
    if launched_rank() != 0:
        return
    if json_output:
        print_json(result)
    elif "distilled" in result:
        _print_comparison(result)
    else:
        _print_summary(result, run_dir or options["out_dir"])


def _saved_config(run_dir: str, epochs: int | None) -> TrainConfig:
    config = load_resumable(run_dir).config.replace(out_dir=run_dir)
    return config.replace(epochs=epochs) if epochs else config


def _print_summary(summary: dict[str, Any], run_dir: str) -> None:
    best, final = summary["best"], summary["final"]
    if best and best.get("val_top1") is not None:
        console.print(f"best epoch {best['epoch']}: val top-1 {best['val_top1']:.2f} % (val loss {best['val_loss']:.4f})")
    if final:
        stop = " (stopped early)" if summary["stopped_early"] else ""
        val = f", val top-1 {final['val_top1']:.2f} %" if final.get("val_top1") is not None else ""
        console.print(f"last epoch {final['epoch']}{stop}: train loss {final['train_loss']:.4f}{val}")
    if final and final["skipped"]:
        console.print(f"{final['skipped']} unreadable file(s) skipped per epoch (listed in the log)")
    console.print(f"run folder: {run_dir} (best.pt, last.pt, metrics.csv, metrics.json, curves.png); "
                  f"use it with: resnetkit classify {run_dir}/best.pt IMAGE", highlight=False)


def _print_comparison(report: dict[str, Any]) -> None:
    console.print(f"student {report['student']}, teacher {report['teacher']}, T={report['temperature']}, "
                  f"alpha={report['alpha']}, {report['epochs']} epochs", highlight=False)
    for name in ("distilled", "baseline"):
        row = report[name]
        console.print(f"  {name:<9} final val top-1 {_pct(row['final_val_top1'])}, best {_pct(row['best_val_top1'])} "
                      f"(epoch {row['best_epoch']})")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} %"


def _command(task: str, leading: list[inspect.Parameter], doc: str) -> Callable[..., None]:
    def command(**options: Any) -> None:
        _launch(task, options)

    command.__signature__ = inspect.Signature(leading + COMMON)  # type: ignore[attr-defined]
    command.__doc__ = doc
    return command


app.command("finetune")(_command("finetune", [MODEL, DATA, MODE, HEAD_LR],
    "Adapt a pretrained model to the classes of DATA_DIR: new head; train the head, last stage or all."))
app.command("train")(_command("train", [MODEL, DATA],
    "Train a zoo architecture from random initialisation on DATA_DIR."))
app.command("distill")(_command("distill", [DATA, TEACHER, STUDENT, *DISTILL_OPTIONS],
    "Distil a teacher into a student: alpha * KL(student/T || teacher/T) * T^2 + (1 - alpha) * cross-entropy."))
