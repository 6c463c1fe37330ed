"""The Typer application, its one error style, and the vocabulary every command speaks.

Rules for every command (the types and helpers below make them the easy path):

- Usage lines read ``resnetkit CMD [OPTIONS] MODEL PATH...``: arguments print upper-case, without
  braces; set ``metavar`` when the parameter's name is not the word to show (``paths`` -> ``PATH``).
- ``--json`` (:data:`JsonFlag`) prints JSON to stdout with :func:`print_json` and nothing else
  (messages go to stderr). Files are written with ``-o/--output FILE`` (:data:`OutputOpt`) or a
  named flag (``--csv FILE``, ``--plot FILE``), never with ``--json FILE``.
- A failure is one ``error: ...`` paragraph on stderr and a non-zero exit, never a traceback:
  raise a :class:`~resnetkit.core.errors.ResnetkitError` (exit 2; its message says what to do).
  Bad flags and values (Typer's usage errors) print the same way plus a usage hint, exit 2.
- One name per concept: ``--weights`` (:data:`WeightsOpt`), ``--random-weights``
  (:data:`RandomWeightsFlag`), ``--backend`` / ``--precision`` (:data:`BackendOpt`,
  :data:`PrecisionOpt`; default None = auto for PyTorch models, a file's own runtime for exported
  files), ``--device`` (:data:`DeviceOpt`; auto = the first CUDA GPU torch sees, else the CPU),
  ``--batch-size``, ``--workers``, ``--eval DIR`` / ``--eval-limit N``, ``-o/--output``.
- Every option's help shows its default: Typer adds ``[default: X]`` for a real default value; an
  option whose default is None or depends on something ends its help with :func:`default`'s
  ``(default: ...)``. No square brackets in help texts: help is rich markup, which swallows them.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any, Sequence

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperArgument, TyperCommand, TyperGroup

from ..core.errors import ResnetkitError
from ..core.extras import missing_extra


def _width(stream) -> int | None:
    """Terminal width on a terminal; wide enough for tables when piped or captured."""
    return None if stream.isatty() or os.environ.get("COLUMNS") else 200


# No markup: model labels like "resnet50 [onnxruntime/int8]" and file names with brackets print as they are.
console = Console(soft_wrap=True, width=_width(sys.stdout), markup=False)
err_console = Console(stderr=True, soft_wrap=True, width=_width(sys.stderr), markup=False)


def styled(*parts: str | tuple[str, str]) -> Text:
    """Plain strings and (text, style) pairs as one line, e.g. styled(("error:", "bold red"), " message")."""
    return Text.assemble(*parts)


def print_error(message: str) -> None:
    """The one error style: ``error: message`` on stderr."""
    err_console.print(styled(("error:", "bold red"), f" {message}"), highlight=False, soft_wrap=True)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
    """resnetkit's own warnings as one ``note:`` line (not Python's file:line format with a source line); others'
    as Python shows them."""
    if Path(filename).resolve().is_relative_to(PACKAGE_DIR):
        err_console.print(f"note: {message}", highlight=False)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


PACKAGE_DIR = Path(__file__).resolve().parents[1]
_python_show_warning = warnings.showwarning
warnings.showwarning = _show_warning
# Pillow warns of images above its own pixel limit; resnetkit's limit (--max-pixels) is checked right after, and
# its error (or the image, when the limit was raised on purpose) is what a user needs to see
warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit", module="PIL")


def print_json(data: Any) -> None:
    """JSON to stdout (never through rich, so it stays parseable)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def ms_text(value: float | None) -> str:
    """Milliseconds to three significant digits or more (0.459, 4.59, 45.9), so that sub-millisecond times and
    their confidence intervals do not all round to the same figure (or to 0.0)."""
    return "-" if value is None else f"{value:.{3 if value < 1 else 2 if value < 10 else 1}f}"


def default(help: str, value: object) -> str:
    """``help`` ending with ``(default: value)``, for options whose default Typer cannot show."""
    return f"{help.rstrip()} (default: {value})"


class Command(TyperCommand):
    """A command whose usage line reads ``MODEL PATH...`` (Typer's own reads ``{model} {paths}...``) and whose
    help paragraphs wrap to the terminal."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.help:  # Typer keeps the docstring's line breaks after the first paragraph, mid-sentence on the page
            paragraphs = inspect.cleandoc(self.help).split("\n\n")
            self.help = "\n\n".join(" ".join(paragraph.split()) for paragraph in paragraphs)

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = (param.metavar or param.name or "").upper() + ("..." if param.nargs != 1 else "")
                pieces.append(name if param.required else f"[{name}]")
        return pieces


class Group(TyperGroup):
    """Turns every failure into one ``error:`` line: ResnetkitError, Ctrl-C and Typer's usage errors."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ResnetkitError as exc:
            print_error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except ModuleNotFoundError as exc:  # an optional extra's module, imported on first use
            error = missing_extra(exc, f"'{' '.join(filter(None, (ctx.command_path, ctx.invoked_subcommand)))}'")
            if error is None:
                raise
            print_error(str(error))
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.Abort:
            print_error("aborted.")
            code = 1
        except Exception as exc:  # Typer's usage errors (bad flag, missing argument, invalid value) are not public classes
            if not (callable(getattr(exc, "format_message", None)) and isinstance(getattr(exc, "exit_code", None), int)):
                raise
            code = _usage_error(exc)
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


def _usage_error(exc: Any) -> int:
    """Print a Typer usage error as ``error: ...`` with a usage hint; its exit code (2)."""
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group: Typer already printed its help
        return exc.exit_code
    print_error(exc.format_message())
    if ctx is not None:
        err_console.print(f"{ctx.get_usage()}\nSee '{ctx.command_path} --help'.", highlight=False)
    return exc.exit_code


class App(typer.Typer):
    """A Typer app whose commands are :class:`Command` s and whose groups are :class:`Group` s."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cls=Group, no_args_is_help=True, **kwargs)

    def command(self, *args: Any, cls: type[TyperCommand] | None = None, **kwargs: Any) -> Any:
        return super().command(*args, cls=cls or Command, **kwargs)


app = App(
    name="resnetkit",
    help="Choose, run, serve, shrink and adapt pretrained ResNet-family image classifiers.",
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)



def _print_version(value: bool) -> None:
    if value:
        console.print(f"resnetkit {importlib.metadata.version('resnetkit')}", highlight=False)
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                                    help="Print resnetkit's version and exit.")] = False) -> None:
    """Options before the command."""


ModelArg = Annotated[str, typer.Argument(
    metavar="MODEL", help="Zoo name (see 'resnetkit models') or path of a model file written by resnetkit.")]
WeightsOpt = Annotated[str | None, typer.Option("--weights", help=default(
    "Weights tag of the zoo model (e.g. IMAGENET1K_V2) or a checkpoint file.", "the model's default weights"))]
RandomWeightsFlag = Annotated[bool, typer.Option("--random-weights", help=(
    "Random weights instead of trained ones (offline; for cost and speed: the labels are meaningless)."))]
BackendOpt = Annotated[str | None, typer.Option("--backend", help=default(
    "Inference backend (see 'resnetkit backends').",
    "auto for PyTorch models (the fastest backend measured on this machine); an exported file's own runtime: "
    "ONNX Runtime for .onnx, OpenVINO for .xml, TorchScript for .torchscript"))]
PrecisionOpt = Annotated[str | None, typer.Option("--precision", help=default(
    "fp32, fp16, bf16 or int8, backend permitting.",
    "auto's: bf16 where the CPU computes it natively, else fp32; fp16 on a GPU; a file's stored precision"))]
DeviceOpt = Annotated[str, typer.Option("--device", help=(
    "Where the model runs: auto (the first CUDA GPU torch sees, else the CPU), cpu, cuda or cuda:N."))]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")]
WorkersOpt = Annotated[int | None, typer.Option("--workers", min=0, help=default(
    "Image decoding workers.", "every usable core (processes) when the model runs on a GPU, else 2"))]
OutputOpt = Annotated[str, typer.Option("--output", "-o", help="File to write.")]
EvalOpt = Annotated[str | None, typer.Option("--eval", help=default(
    "Labelled class-per-folder images: report top-1 on them.", "no accuracy measured"))]
EvalLimitOpt = Annotated[int | None, typer.Option("--eval-limit", min=1, help=default(
    "Evaluate a fixed random subset of N images.", "all images"))]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON to stdout, and nothing else.")]
