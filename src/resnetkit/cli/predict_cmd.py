"""``resnetkit predict``: label many images into Parquet/CSV/JSONL part files, locally or on Ray Data."""

from __future__ import annotations

from typing import Annotated

import typer

from ..core.extras import require
from .app import (BackendOpt, BatchSizeOpt, DeviceOpt, JsonFlag, ModelArg, PrecisionOpt, RandomWeightsFlag, WeightsOpt,
                  WorkersOpt, app, console, default, print_json)


@app.command("predict")
def predict_command(
    model: ModelArg,
    data: Annotated[list[str], typer.Argument(
        help="Folders (walked), globs ('photos/**/*.jpg'), text files of paths (.txt/.lst), Parquet/CSV tables "
             "with a path column, or image files.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Output folder of part files; its suffix "
                                        "(.parquet, .csv, .jsonl) is the format.")],
    fmt: Annotated[str | None, typer.Option("--format", help=default(
        "parquet, csv or jsonl.", "from the -o suffix, else parquet"), show_default=False)] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Labels kept per image.")] = 5,
    batch_size: BatchSizeOpt = 32,
    workers: WorkersOpt = None,
    part_size: Annotated[int, typer.Option("--part-size", min=1, help="Rows per part file (rows held in memory "
                                           "before a flush).")] = 5000,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run: skip every image the "
                                         "output already holds.")] = False,
    path_column: Annotated[str, typer.Option("--path-column", help="Column of image paths in Parquet/CSV "
                                             "inputs.")] = "path",
    ray: Annotated[bool, typer.Option("--ray", help="Run on Ray Data (needs the ray extra, see docs/scale.md).")] = False,
    address: Annotated[str | None, typer.Option("--address", help=default(
        "Ray cluster address for --ray.", "RAY_ADDRESS, else a local Ray started for this run"),
        show_default=False)] = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency", min=1, show_default=False, help=default(
        "Model actors with --ray.", 2))] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, show_default=False, help=default(
        "Intra-op threads of the model on the CPU; with --ray, the CPUs each actor asks Ray for and runs its "
        "model on.", "the runtime's own (every usable core); with --ray 1 per actor"))] = None,
    gpus_per_actor: Annotated[float | None, typer.Option(
        "--gpus-per-actor", min=0, show_default=False, help=default(
            "GPUs each model actor asks Ray for with --ray; fractions share a GPU (0.25: four actors on one); 0: "
            "the actors run on the CPU.", "1 with --device cuda, else 0: the driver may have no GPU while the "
            "cluster has"))] = None,
    weights: WeightsOpt = None,
    backend: BackendOpt = None,
    precision: PrecisionOpt = None,
    random_weights: RandomWeightsFlag = False,
    device: DeviceOpt = "auto",
    json_output: JsonFlag = False,
) -> None:
    """Label every image into part files under -o, with a progress bar and a summary line; unreadable files are rows
    with an error, and make the exit code 1.

    Example: resnetkit predict resnet50 photos/ -o labels.parquet (add --resume after an interruption, --ray for Ray Data).
    """
    require("predict", "'resnetkit predict'")
    from ..batch.engine import ModelRequest, predict
    from ..batch.inputs import InputError
    from ..scale.data import RayEngine

    if address and not ray:
        raise InputError(f"--address {address} is a Ray cluster address: add --ray to run there.")
    if concurrency is not None and not ray:
        raise InputError(f"--concurrency {concurrency} sets the model actors of --ray: add --ray, or drop it (without "
                         "--ray one model runs in this process, with --workers decoding).")
    if gpus_per_actor is not None and not ray:
        raise InputError("--gpus-per-actor asks Ray for GPUs: add --ray, or drop it (without --ray the model runs "
                         "in this process).")
    request = ModelRequest(model, weights=weights, random_weights=random_weights, backend=backend,
                           precision=precision, batch_size=batch_size, device=device, threads=threads)
    engine = RayEngine(concurrency or 2, address, gpus_per_actor) if ray else None
    summary = predict(request, data, output, fmt=fmt, top_k=top_k, workers=workers, part_size=part_size,
                      resume=resume, path_column=path_column, engine=engine)
    if json_output:
        print_json(summary.to_dict())
    else:
        console.print(summary.line(), highlight=False)
    if summary.errors:  # as classify and embed: the rows are written, the exit code says some files failed
        raise typer.Exit(1)
