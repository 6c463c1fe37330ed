"""The Typer application object and the options shared by several commands."""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

app = typer.Typer(
    name="resnetkit",
    help="Choose, run, serve, shrink and adapt pretrained ResNet-family image classifiers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

def _width(stream) -> int | None:
    """Terminal width on a terminal; wide enough for tables when piped or captured."""
    return None if stream.isatty() or os.environ.get("COLUMNS") else 200


# No markup: model labels like "resnet50 [onnxruntime/int8]" and file names with brackets print as they are.
console = Console(soft_wrap=True, width=_width(sys.stdout), markup=False)
err_console = Console(stderr=True, soft_wrap=True, width=_width(sys.stderr), markup=False)


def styled(*parts: str | tuple[str, str]) -> Text:
    """Plain strings and (text, style) pairs as one line, e.g. styled(("error:", "bold red"), " message")."""
    return Text.assemble(*parts)

ModelArg = Annotated[str, typer.Argument(help="Zoo name (see 'resnetkit models') or path of a model file written by resnetkit.")]
WeightsOpt = Annotated[str | None, typer.Option("--weights", help="Weights tag of the zoo model (e.g. IMAGENET1K_V2) or a checkpoint file.")]
BackendOpt = Annotated[str | None, typer.Option(
    "--backend", help="Inference backend (see 'resnetkit backends'). Default: eager for PyTorch models, "
                      "ONNX Runtime for .onnx and OpenVINO for .xml files.")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]


def print_json(data: Any) -> None:
    """JSON to stdout (never through rich, so it stays parseable)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
