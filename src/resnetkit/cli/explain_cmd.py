"""``resnetkit explain``: where the model looks, as heatmap PNGs."""

from __future__ import annotations

from typing import Annotated

import typer

from ..core.device import resolve_device
from ..explain import METHODS, explain
from .app import DeviceOpt, JsonFlag, ModelArg, RandomWeightsFlag, WeightsOpt, app, print_json
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
    """A heatmap over each image for each of its top-k classes (PyTorch models: zoo names and .pt files)."""
    report = explain(model, paths, output, top_k=top_k, method=method, weights=weights, pretrained=not random_weights,
                     device=resolve_device(device))
    if json_output:
        print_json(report.to_dict())
    else:
        print_what_ran(report.model, report.ran, report.random_weights)
        print_per_source(report.results, lambda r: [f"{h.label} {100 * h.score:.2f}%  {h.path}" for h in r.heatmaps])
    if any(r.error for r in report.results):
        raise typer.Exit(1)
