"""``resnetkit embed`` and ``resnetkit similar``: embeddings and nearest neighbours."""

from __future__ import annotations

from typing import Annotated, Any, Callable, Sequence

import typer

from ..core.device import resolve_device
from ..features import embed_to_file, find_similar
from .app import (BackendOpt, BatchSizeOpt, DeviceOpt, JsonFlag, ModelArg, PrecisionOpt, RandomWeightsFlag, WeightsOpt,
                  WorkersOpt, app, console, default, err_console, print_json, styled)

ImagesArg = Annotated[list[str], typer.Argument(help="Image files and/or folders (walked recursively).")]


@app.command("embed")
def embed_command(
    model: ModelArg,
    paths: ImagesArg,
    output: Annotated[str, typer.Option("--output", "-o", help="FILE.parquet (one row per image) or STEM.npy "
                                                                "(+ STEM.sources.json).")],
    layer: Annotated[str | None, typer.Option("--layer", help=default(
        "Take an earlier stage (e.g. layer3), average-pooled.", "the pooled features before the classifier"))] = None,
    normalize: Annotated[bool, typer.Option("--normalize", help="Scale every embedding to unit length.")] = False,
    batch_size: BatchSizeOpt = 16,
    weights: WeightsOpt = None,
    random_weights: RandomWeightsFlag = False,
    backend: BackendOpt = None,
    precision: PrecisionOpt = None,
    device: DeviceOpt = "auto",
    workers: WorkersOpt = None,
    json_output: JsonFlag = False,
) -> None:
    """Write one embedding per image (source, embedding, error). Unreadable files become error rows."""
    where = resolve_device(device)
    report = embed_to_file(model, paths, output, batch_size=batch_size, workers=workers, layer=layer,
                           normalize=normalize, weights=weights, pretrained=not random_weights, backend=backend,
                           precision=precision, device=where)
    if json_output:
        print_json(report.to_dict())
    else:
        info = report.info
        console.print(f"{report.rows} rows ({report.rows - len(report.failed)} embeddings of {info['dim']} floats, "
                      f"{info['arch']} {info['layer'] or 'pooled features'}, {report.ran.label()}) "
                      f"written to {report.path}", highlight=False)
        for source, error in report.failed:
            err_console.print(styled(f"{source}: ", ("error:", "red"), f" {error}"), highlight=False)
    if report.failed:
        raise typer.Exit(1)


@app.command("similar")
def similar_command(
    embeddings: Annotated[str, typer.Argument(help="Embedding file written by 'resnetkit embed'.")],
    images: ImagesArg,
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, help="Neighbours per query image.")] = 5,
    method: Annotated[str, typer.Option("--method", help="exact (NumPy), hnsw (faiss index, cached next to the file) "
                                                         "or auto (exact for small files).")] = "auto",
    batch_size: BatchSizeOpt = 16,
    backend: BackendOpt = None,
    precision: PrecisionOpt = None,
    device: DeviceOpt = "auto",
    workers: WorkersOpt = None,
    json_output: JsonFlag = False,
) -> None:
    """The most similar stored images (cosine) for each query image, embedded with the file's model."""
    where = resolve_device(device)
    report = find_similar(embeddings, images, k=k, method=method, batch_size=batch_size, workers=workers,
                          backend=backend, precision=precision, device=where)
    if json_output:
        print_json({"embeddings": embeddings, **report.to_dict()})
    else:
        print_per_source(report.results, lambda r: [f"{n.score:.4f}  {n.source}" for n in r.neighbours])
        err_console.print(f"cosine similarity, {report.method} search; queries embedded by {report.ran.label()}",
                          highlight=False)
    if any(r.error for r in report.results):
        raise typer.Exit(1)


def print_per_source(results: Sequence[Any], lines: Callable[[Any], list[str]]) -> None:
    """Per result: ``source: error: ...``, or ``source:`` followed by its indented ``lines``."""
    for result in results:
        if result.error:
            console.print(styled(f"{result.source}: ", ("error:", "red"), f" {result.error}"), highlight=False)
            continue
        console.print(f"{result.source}:", highlight=False)
        for line in lines(result):
            console.print(f"  {line}", highlight=False)
