"""``resnetkit weights pull|import|list``: manage the checkpoint cache."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ..core import weights as weights_lib
from ..core.zoo import get_spec
from .app import App, JsonFlag, app, console, default, print_json

weights_app = App(help="Download, import and list pretrained weights (torch.hub cache, $TORCH_HOME).")
app.add_typer(weights_app, name="weights")

ZooModelArg = Annotated[str, typer.Argument(metavar="MODEL", help="Zoo model name, e.g. resnet50 or cifar_resnet20.")]
TagOpt = Annotated[str | None, typer.Option("--weights", help=default("Weights tag.", "the model's default weights"))]


@weights_app.command("pull")
def pull(model: ZooModelArg, tag: TagOpt = None) -> None:
    """Download a model's weights into the cache and verify the hash."""
    weights = get_spec(model).get_weights(tag)
    path = weights_lib.cached_path(weights)
    if path.is_file():
        console.print(f"{model} {weights.tag}: already cached at {path}")
        return
    path = weights_lib.download(model, weights)
    console.print(f"{model} {weights.tag}: downloaded and verified (sha256 {weights.expected_hash[:16]}...) -> {path}")


@weights_app.command("import")
def import_(model: ZooModelArg, file: Annotated[str, typer.Argument(metavar="FILE", help="Local checkpoint file.")], tag: TagOpt = None) -> None:
    """Verify a local checkpoint file against the published hash and place it in the cache."""
    weights = get_spec(model).get_weights(tag)
    path = weights_lib.import_file(model, weights, file)
    console.print(f"{model} {weights.tag}: verified (sha256 {weights.expected_hash[:16]}...) and imported -> {path}")


@weights_app.command("list")
def list_(json_output: JsonFlag = False) -> None:
    """Show the zoo weights present in the cache."""
    cached = weights_lib.list_cached()
    if json_output:
        print_json([{"model": c.model, "tag": c.tag, "path": str(c.path), "size_mb": round(c.size_mb, 2)} for c in cached])
        return
    if not cached:
        console.print(f"No zoo weights cached in {weights_lib.cache_dir()}. Use 'resnetkit weights pull MODEL'.")
        return
    table = Table(title=f"cached weights in {weights_lib.cache_dir()}")
    for column in ("model", "weights", "size (MB)", "path"):
        table.add_column(column)
    for c in cached:
        table.add_row(c.model, c.tag, f"{c.size_mb:.1f}", str(c.path))
    console.print(table)
