"""``resnetkit weights pull|import|list``: manage the checkpoint cache."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..core import weights as weights_lib
from ..core.zoo import get_spec
from ..interop.timm import import_checkpoint, read_sidecar
from .app import App, JsonFlag, app, console, default, err_console, print_json

weights_app = App(help="Download, import and list pretrained weights (torch.hub cache, $TORCH_HOME).")
app.add_typer(weights_app, name="weights")

ZooModelArg = Annotated[str, typer.Argument(metavar="MODEL", help="Zoo model name, e.g. resnet50 or cifar_resnet20.")]
TagOpt = Annotated[str | None, typer.Option("--weights", help=default("Weights tag.", "the model's default weights"))]


@weights_app.command("pull")
def pull(model: ZooModelArg, tag: TagOpt = None) -> None:
    """Download a model's weights into the cache and verify the hash; a cached file that fails the check is replaced."""
    weights = get_spec(model).get_weights(tag)
    path = weights_lib.cached_path(weights)
    if weights_lib.is_intact(weights):
        console.print(f"{model} {weights.tag}: already cached and verified at {path}")
        return
    if path.exists():
        err_console.print(f"{path} does not have its published hash (truncated or corrupt): downloading it again",
                          highlight=False)
    path = weights_lib.download(model, weights)
    console.print(f"{model} {weights.tag}: downloaded and verified (sha256 {weights.expected_hash[:16]}...) -> {path}")


@weights_app.command("import")
def import_(
    model: ZooModelArg,
    file: Annotated[str, typer.Argument(metavar="FILE", help="Local checkpoint file (.pth, .th, .safetensors).")],
    tag: TagOpt = None,
    preprocessing: Annotated[str | None, typer.Option(
        "--preprocessing", help=default("Other weights (e.g. timm's): timm:crop_pct=0.95,interpolation=bicubic,mean=...,"
                                        "std=...,input_size=224; writes a model file instead of filling the cache.",
                                        "none"))] = None,
    output: Annotated[str | None, typer.Option(
        "--output", "-o", help=default("Model file for other weights.", "FILE with suffix .pt"))] = None,
) -> None:
    """Place a published checkpoint in the cache (hash-checked), or turn other weights (timm, .safetensors) into a model file.

    Other weights are recognised by --preprocessing, a .safetensors file, or a timm pretrained_cfg next to the
    file (config.json, pretrained_cfg.json, FILE.json); their preprocessing comes from those."""
    if preprocessing or Path(file).suffix.lower() == ".safetensors" or read_sidecar(Path(file)):
        path, prep = import_checkpoint(model, file, preprocessing, output)
        console.print(f"{model}: weights from {file} with preprocessing {prep.describe()} -> {path} "
                      f"(use it as MODEL, e.g. 'resnetkit classify {path} photo.jpg')", highlight=False)
        return
    weights = get_spec(model).get_weights(tag)
    path = weights_lib.import_file(model, weights, file)
    console.print(f"{model} {weights.tag}: verified (sha256 {weights.expected_hash[:16]}...) and imported -> {path}")


@weights_app.command("list")
def list_(json_output: JsonFlag = False) -> None:
    """Show the zoo weights present in the cache."""
    cached = weights_lib.list_cached()
    if json_output:
        print_json([{"model": c.model, "tag": c.tag, "path": str(c.path), "size_mb": round(c.size_mb, 2),
                     "intact": c.intact} for c in cached])
        return
    if not cached:
        console.print(f"No zoo weights cached in {weights_lib.cache_dir()}. Use 'resnetkit weights pull MODEL'.")
        return
    table = Table(title=f"cached weights in {weights_lib.cache_dir()}")
    for column in ("model", "weights", "size (MB)", "hash", "path"):
        table.add_column(column)
    for c in cached:
        check = "ok" if c.intact else f"truncated or corrupt: run '{weights_lib.pull_command(c.model, c.tag)}'"
        table.add_row(c.model, c.tag, f"{c.size_mb:.1f}", check, str(c.path))
    console.print(table)
