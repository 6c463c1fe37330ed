"""``resnetkit explain``: where the model looks, as heatmap PNGs."""

from __future__ import annotations

from typing import Annotated

import typer

from ..explain import METHODS, explain
from .app import JsonFlag, ModelArg, WeightsOpt, app, console, print_json, styled
from .optimize_cmd import RandomWeightsFlag


@app.command("explain")
def explain_command(
    model: ModelArg,
    paths: Annotated[list[str], typer.Argument(help="Image files and/or folders (walked recursively).")],
    output: Annotated[str, typer.Option("--output", "-o", help="Folder for the PNG heatmaps and explanations.json.")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Classes to explain per image.")] = 3,
    method: Annotated[str, typer.Option("--method", help=f"CAM method of the grad-cam library: {', '.join(METHODS)}.")] = "gradcam",
    weights: WeightsOpt = None,
    random_weights: RandomWeightsFlag = False,
    json_output: JsonFlag = False,
) -> None:
    """A heatmap over each image for each of its top-k classes (PyTorch models: zoo names and .pt files)."""
    results = explain(model, paths, output, top_k=top_k, method=method, weights=weights, pretrained=not random_weights)
    if json_output:
        print_json([r.to_dict() for r in results])
    else:
        for result in results:
            if result.error:
                console.print(styled(f"{result.source}: ", ("error:", "red"), f" {result.error}"), highlight=False)
                continue
            console.print(f"{result.source}:", highlight=False)
            for h in result.heatmaps:
                console.print(f"  {h.label} {100 * h.score:.2f}%  {h.path}", highlight=False)
    if any(r.error for r in results):
        raise typer.Exit(1)
