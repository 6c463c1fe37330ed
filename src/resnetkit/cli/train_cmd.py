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
from ..train.config import FROM_RANDOM, FROM_WEIGHTS, TrainingError
from ..train.distill import distill_with_baseline
from ..train.distributed import launched_rank
from ..train.hardware import default_workers
from .app import DeviceOpt, app, console, default, err_console, print_json


def _param(name: str, annotation: Any, default: Any = None) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def _opt(kind: Any, *flags: str, help: str, **extra: Any) -> Any:
    return Annotated[kind, typer.Option(*flags, help=help, **extra)]


def _by_start(name: str) -> str:
    """The default of TrainConfig field ``name`` from weights and from random weights."""
    return f"{FROM_WEIGHTS[name]:g}; {FROM_RANDOM[name]:g} from random weights: train, distill --random-weights"


MODEL = _param("model", Annotated[str | None, typer.Argument(
    metavar="MODEL", help="Zoo name (see 'resnetkit models') or a resnetkit model file, e.g. a previous run's best.pt.", show_default=False)])
DATA = _param("data_dir", Annotated[str | None, typer.Argument(
    metavar="DATA_DIR", help="Folder with one sub-folder of images per class, or with train/ and val/ such folders.", show_default=False)])
MODE = _param("mode", _opt(str | None, "--mode", help=default("What trains: head | last-stage | full.", FROM_WEIGHTS["mode"])))
HEAD_LR = _param("head_lr", _opt(float | None, "--head-lr", help=default("Peak learning rate of the classifier layer.", "10 x --lr for a new head, else --lr")))
TEACHER = _param("teacher", _opt(str | None, "--teacher", help="Teacher model reference (frozen, eval mode); required unless --resume."))
STUDENT = _param("model", _opt(str | None, "--student", help="Student model reference; required unless --resume."))
CONTEXT = _param("context", typer.Context)  # what was given on the command line (see RESUME_MAY_CHANGE)
DISTILL_OPTIONS = [
    _param("temperature", _opt(float, "--temperature", help="Softmax temperature T of the KL term."), 4.0),
    _param("alpha", _opt(float, "--alpha", help="Weight of the KL term; 1 - alpha weights cross-entropy."), 0.5),
    _param("random_weights", _opt(bool, "--random-weights", help="Start the student from random weights instead of its trained ones."), False),
    _param("baseline", _opt(bool, "--baseline/--no-baseline", help="Also train the student without the teacher and compare."), True),
]
COMMON = [
    _param("out_dir", _opt(str | None, "-o", "--output", help="Run folder: best.pt, last.pt, metrics.csv/json, curves.png; required unless --resume.")),
    _param("epochs", _opt(int | None, "--epochs", min=1, help=default("Epochs to train; with --resume: extend the run to this many.", _by_start("epochs")))),
    _param("lr", _opt(float | None, "--lr", help=default("Peak learning rate; when fine-tuning, of the pretrained layers that train.", _by_start("lr")))),
    _param("batch_size", _opt(int, "--batch-size", min=1, help="Images per step and process."), 64),
    _param("accum_steps", _opt(int, "--accum-steps", min=1, help="Batches per optimizer step (gradient accumulation)."), 1),
    _param("optimizer", _opt(str, "--optimizer", help="sgd (Nesterov momentum 0.9) | adamw."), "sgd"),
    _param("weight_decay", _opt(float | None, "--weight-decay", help=default("Weight decay (not on biases/norms).", _by_start("weight_decay")))),
    _param("label_smoothing", _opt(float, "--label-smoothing", help="Label smoothing of the cross-entropy."), 0.0),
    _param("schedule", _opt(str, "--schedule", help="cosine | onecycle (30 % warm-up from lr/25)."), "cosine"),
    _param("warmup_epochs", _opt(float, "--warmup-epochs", help="Linear warm-up length in epochs (overrides the schedule's)."), 0.0),
    _param("clip_grad", _opt(float | None, "--clip-grad", help=default("Clip the global gradient norm to this value.", "no clipping"))),
    _param("precision", _opt(str | None, "--precision", help=default(
        "fp32 | fp16 (autocast + gradient scaler; CUDA only) | bf16 (autocast).", "fp16 on CUDA, fp32 on CPU"))),
    _param("amp", _opt(bool, "--amp", help="Mixed precision, the device's kind: an alias of --precision fp16 on CUDA "
                                           "(its default) and --precision bf16 on CPU."), False),
    _param("channels_last", _opt(bool | None, "--channels-last/--no-channels-last", help=default(
        "Channels-last memory format for weights and batches.", "on CUDA, off on CPU"))),
    _param("compile", _opt(bool, "--compile", help="torch.compile the model: faster steps, but the first step takes "
                                                   "tens of seconds to compile (and the epoch's last, smaller batch again)."), False),
    _param("val_dir", _opt(str | None, "--val", help=default("Validation folder.", "DATA_DIR/val if present"))),
    _param("val_split", _opt(float | None, "--val-split", help=default("Fraction of each class held out when there is no validation folder; 0 = none.", 0.1))),
    _param("early_stop", _opt(int | None, "--early-stop", min=1, help=default("Stop after this many epochs without a better validation accuracy.", "never"))),
    _param("augment", _opt(str, "--augment", help="standard (crop + flip for the model's input size) | none."), "standard"),
    _param("workers", _opt(int | None, "--workers", min=0, help=default(
        "Data-loading processes; 0 loads in the training process.",
        f"the usable cores minus one per training process, at least 1: {default_workers()} here"))),
    _param("seed", _opt(int, "--seed", help="Seed of initialisation, split, shuffling and augmentation."), 0),
    _param("device", DeviceOpt, "auto"),
    _param("resume", _opt(str | None, "--resume", help=default("Continue the run in this folder exactly where it stopped (its saved settings are used).", "a new run"))),
    _param("json_output", _opt(bool, "--json", help="Print the run summary as JSON to stdout (progress goes to stderr)."), False),
]


def _config(task: str, options: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from the command's options; ``None`` takes the task's default."""
    if not options.get("model") or not options.get("data_dir") or not options.get("out_dir"):
        what = "--teacher, --student, DATA_DIR" if task == "distill" else "MODEL, DATA_DIR"
        raise TrainingError(f"{task} needs {what} and -o RUN_DIR (or --resume RUN_DIR); see 'resnetkit {task} --help'.")
    options = dict(options)
    if options.pop("random_weights", False):
        options["pretrained"] = False
    return TrainConfig(task=task, **{k: v for k, v in options.items() if v is not None})


def _launch(task: str, options: dict[str, Any]) -> None:
    try:
        _start(task, options)
    except TrainingInterrupted as exc:
        if launched_rank() == 0:
            err_console.print(str(exc), highlight=False)
        raise typer.Exit(exc.exit_code) from None


def _start(task: str, options: dict[str, Any]) -> None:
    run_dir, json_output, with_baseline = options.pop("resume"), options.pop("json_output"), options.pop("baseline", False)
    context = options.pop("context")
    if run_dir:
        _refuse_settings_besides_resume(run_dir, context)
    config = _saved_config(run_dir, options["epochs"], options["workers"]) if run_dir else _config(task, options)
    if config.task == "distill" and with_baseline:
        result = distill_with_baseline(config, resuming=bool(run_dir))
    else:  # with --resume, also the baseline folder of a distillation
        result = resume(run_dir, epochs=config.epochs, workers=config.workers) if run_dir else run(config)
    if launched_rank() != 0:
        return
    if json_output:
        print_json(result)
    elif "distilled" in result:
        _print_comparison(result)
    else:
        _print_summary(result, run_dir or options["out_dir"])


# what --resume may change: how long the run goes on, how its data is loaded, what is printed; the other options
# are the run's saved settings, and one given beside --resume would be ignored
RESUME_MAY_CHANGE = ("resume", "epochs", "workers", "json_output", "baseline")


def _refuse_settings_besides_resume(run_dir: str, context: typer.Context) -> None:
    given = [param.opts[-1] if param.param_type_name == "option" else param.human_readable_name
             for param in context.command.params if param.name not in RESUME_MAY_CHANGE
             and getattr(context.get_parameter_source(param.name), "name", None) in ("COMMANDLINE", "ENVIRONMENT")]
    if given:
        raise TrainingError(f"--resume {run_dir} goes on with the run's saved settings, so {', '.join(given)} would be "
                            "ignored: drop them (with --resume only --epochs, --workers and --json may be given), or "
                            "start a new run with -o.")


def _saved_config(run_dir: str, epochs: int | None, workers: int | None) -> TrainConfig:
    config = load_resumable(run_dir).config.replace(out_dir=run_dir)
    changes = {name: value for name, value in (("epochs", epochs), ("workers", workers)) if value is not None}
    return config.replace(**changes)


def _print_summary(summary: dict[str, Any], run_dir: str) -> None:
    best, final = summary["best"], summary["final"]
    if best and best.get("val_top1") is not None:
        console.print(f"best epoch {best['epoch']}: val top-1 {best['val_top1']:.2f} % on {_images(best)} "
                      f"(val loss {best['val_loss']:.4f})")
    if final:
        stop = " (stopped early)" if summary["stopped_early"] else ""
        val = f", val top-1 {final['val_top1']:.2f} % on {_images(final)}" if final.get("val_top1") is not None else ""
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
                      f"(epoch {row['best_epoch']}), on {_images(row)}")


def _images(row: dict[str, Any]) -> str:
    """How many validation images a row's accuracy is on (rows of runs saved before it was recorded have none)."""
    return f"{row['val_images']} images" if row.get("val_images") else "the validation images"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} %"


def _command(task: str, leading: list[inspect.Parameter], doc: str) -> Callable[..., None]:
    def command(**options: Any) -> None:
        _launch(task, options)

    command.__signature__ = inspect.Signature([CONTEXT, *leading, *COMMON])  # type: ignore[attr-defined]
    command.__doc__ = doc
    return command


app.command("finetune")(_command("finetune", [MODEL, DATA, MODE, HEAD_LR],
    "Adapt a pretrained model to the classes of DATA_DIR: new head; train the head, last stage or all."))
app.command("train")(_command("train", [MODEL, DATA],
    "Train a zoo architecture from random initialisation on DATA_DIR."))
app.command("distill")(_command("distill", [DATA, TEACHER, STUDENT, *DISTILL_OPTIONS],
    "Distil a teacher into a student: alpha * KL(student/T || teacher/T) * T^2 + (1 - alpha) * cross-entropy."))
