"""``resnetkit explain``: where the model looks, as heatmap PNGs."""

from __future__ import annotations

from itertools import groupby
from typing import Annotated

import typer

from ..core.device import resolve_device
from ..explain import METHODS, ExplainResult, explain
from .app import DeviceOpt, JsonFlag, ModelArg, RandomWeightsFlag, WeightsOpt, app, err_console, print_json
from .features_cmd import print_per_source
from .run_cmd import print_what_ran


@app.command("explain")
def explain_command(
    model: ModelArg,
    paths: Annotated[list[str], typer.Argument(help="Image files and/or folders (walked recursively).")],
    output: Annotated[str, typer.Option("--output", "-o", help="Folder for the PNG heatmaps and explanations.json.")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Classes to explain per image.")] = 3,
    method: Annotated[str, typer.Option("--method", help=f"CAM method of the grad-cam library: {', '.join(METHODS)}.")] = "gradcam",
    weights: WeightsOpt = None,
    random_weights: RandomWeightsFlag = False,
    device: DeviceOpt = "auto",
    json_output: JsonFlag = False,
) -> None:
    """A heatmap over each image for each of its top-k classes (PyTorch models: zoo names and .pt files); eigencam,
    which is class-agnostic, draws one per image. Unreadable files get an error (exit code 1); when no image could
    be explained, nothing is written."""
    report = explain(model, paths, output, top_k=top_k, method=method, weights=weights, pretrained=not random_weights,
                     device=resolve_device(device))
    failed = sum(r.error is not None for r in report.results)
    if json_output:
        print_json(report.to_dict())
    else:
        print_what_ran(report.model, report.ran, report.random_weights)
        if report.class_agnostic:
            err_console.print(f"{method} is class-agnostic: one heatmap per image, the same for each of its classes",
                              highlight=False)
        print_per_source(report.results, _heatmap_lines)
        if failed:
            none = ", nothing written" if failed == len(report.results) else ""
            err_console.print(f"{failed} of {len(report.results)} file(s) could not be explained{none}.",
                              highlight=False)
    if failed:
        raise typer.Exit(1)


def _heatmap_lines(result: ExplainResult) -> list[str]:
    """One line per heatmap file: its classes with their scores, then its path."""
    return [f"{', '.join(f'{h.label} {100 * h.score:.2f}%' for h in files)}  {path}"
            for path, files in groupby(result.heatmaps, key=lambda h: h.path)]
