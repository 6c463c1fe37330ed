"""``resnetkit classify`` and ``resnetkit evaluate``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ..backends.base import RunInfo, RunnerOptions
from ..core.datasets import require_folder
from ..core.fileio import check_writable
from ..core.device import resolve_device
from ..core.errors import ImageError
from ..core.images import iter_image_paths
from ..core.spec import RANDOM_WEIGHTS, ModelMeta
from ..run.classify import classify
from ..run.evaluate import evaluate
from ..run.loading import load_model
from ..run.video import classify_video, is_video_source
from .app import (BackendOpt, BatchSizeOpt, DeviceOpt, JsonFlag, ModelArg, PrecisionOpt, RandomWeightsFlag, WeightsOpt,
                  WorkersOpt, app, console, default, err_console, print_json, styled)
from .video_cmd import EveryOpt, FpsOpt, MaxFramesOpt, SmoothOpt, print_video_report

RANDOM_WEIGHTS_NOTE = "random weights: labels are meaningless"


def has_random_weights(meta: ModelMeta) -> bool:
    return meta.weights == RANDOM_WEIGHTS


def print_what_ran(model: str, ran: RunInfo, random_weights: bool) -> None:
    """On stderr (stdout stays the results): ``random weights: labels are meaningless`` when they are, then
    ``MODEL: what ran and where`` (e.g. ``resnet50: openvino/bf16 on CPU (auto)``)."""
    if random_weights:
        err_console.print(RANDOM_WEIGHTS_NOTE, highlight=False)
    err_console.print(f"{model}: {ran.label()}", highlight=False)


@app.command("classify")
def classify_command(
    model: ModelArg,
    paths: Annotated[list[str], typer.Argument(
        metavar="PATH", help="Image files and/or folders (walked recursively); videos, stream URLs, /dev/videoN.")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Labels to show per image.")] = 5,
    batch_size: BatchSizeOpt = 16,
    weights: WeightsOpt = None,
    random_weights: RandomWeightsFlag = False,
    backend: BackendOpt = None,
    precision: PrecisionOpt = None,
    device: DeviceOpt = "auto",
    workers: WorkersOpt = None,
    fps: FpsOpt = None,
    every: EveryOpt = None,
    smooth: SmoothOpt = 5,
    max_frames: MaxFramesOpt = None,
    json_output: JsonFlag = False,
) -> None:
    """Top-k labels with probabilities for each image, and per frame plus smoothed segments for each video.

    Unreadable files get an error; the rest are still classified. What ran (backend, precision, device) is
    printed on stderr, or in the JSON."""
    images = [str(p) for p in iter_image_paths(p for p in paths if not is_video_source(p))]
    video_sources = [p for p in paths if is_video_source(p)]
    if not images and not video_sources:  # before loading the model, which may tune it first
        raise ImageError(f"No image files found in {', '.join(paths)}: name image or video files, or folders that hold images.")
    options = RunnerOptions(batch_size=batch_size, precision=precision, device=resolve_device(device))
    classifier = load_model(model, weights=weights, pretrained=not random_weights, backend=backend, options=options)
    results = classify(classifier, images, top_k=top_k, batch_size=batch_size, workers=workers) if images else []
    videos = [classify_video(classifier, p, fps=fps, every=every, top_k=top_k, batch_size=batch_size, smooth=smooth,
                             max_frames=max_frames) for p in video_sources]
    failed = sum(r.error is not None for r in results) + sum(v.error is not None for v in videos)
    if json_output:
        print_json({"model": classifier.meta.name, **classifier.ran.to_dict(),
                    "random_weights": has_random_weights(classifier.meta), "results": [r.to_dict() for r in results],
                    **({"videos": [v.to_dict() for v in videos]} if videos else {})})
    else:
        print_what_ran(classifier.meta.name, classifier.ran, has_random_weights(classifier.meta))
        for result in results:
            if result.error:
                console.print(styled(f"{result.source}: ", ("error:", "red"), f" {result.error}"), highlight=False)
            else:
                labels = ", ".join(f"{p.label} {100 * p.score:.2f}%" for p in result.predictions)
                console.print(f"{result.source}: {labels}", highlight=False)
        for video in videos:
            print_video_report(video)
        if failed:
            err_console.print(f"{failed} of {len(results) + len(videos)} file(s) could not be classified.")
    if failed:
        raise typer.Exit(1)


@app.command("evaluate")
def evaluate_command(
    model: ModelArg,
    data_dir: Annotated[str, typer.Argument(metavar="DATA_DIR", help="Folder with one sub-folder of images per class (class name or WordNet id).")],
    batch_size: BatchSizeOpt = 64,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help=default("Evaluate a fixed random subset of N images.", "all images"))] = None,
    weights: WeightsOpt = None,
    random_weights: RandomWeightsFlag = False,
    backend: BackendOpt = None,
    precision: PrecisionOpt = None,
    device: DeviceOpt = "auto",
    workers: WorkersOpt = None,
    plot: Annotated[str | None, typer.Option("--plot", help=default("Write the confusion matrix as a PNG file.", "no plot"))] = None,
    json_output: JsonFlag = False,
) -> None:
    """Top-1/top-5 accuracy, per-class accuracy, confusion matrix and images/s on a labelled folder."""
    options = RunnerOptions(batch_size=batch_size, precision=precision, device=resolve_device(device))
    require_folder(data_dir)  # before loading the model, which may mean downloading its weights
    if plot:
        check_writable(plot)  # before the evaluation, which would be lost
    classifier = load_model(model, weights=weights, pretrained=not random_weights, backend=backend, options=options)
    report = evaluate(classifier, data_dir, batch_size=batch_size, limit=limit, workers=workers)
    if plot:
        from ..choose.plots import plot_confusion

        plot_confusion(report.confusion, report.classes, plot, f"{report.model} on {data_dir}: top-1 {report.top1:.2f}%")
    if json_output:
        print_json(report.to_dict())
        return
    if report.random_weights:
        err_console.print(RANDOM_WEIGHTS_NOTE, highlight=False)
    subset = f" of {report.subset_of}, a fixed random subset (seed 0)" if report.subset_of else ""
    console.print(f"{report.model} on {data_dir}: top-1 {report.top1:.2f} %, top-5 {report.top5:.2f} % "
                  f"({report.n_images} images{subset}, {report.n_skipped} unreadable skipped)", highlight=False)
    console.print(f"{report.images_per_s:.1f} images/s end to end (decode + preprocess + forward; "
                  f"{report.ran.label()}, batch {batch_size}, {report.workers} decode workers)", highlight=False)
    table = Table("class", "top-1 %", "images")
    for name, row in zip(report.classes, report.confusion):
        table.add_row(name, f"{report.per_class[name]:.2f}", str(sum(row)))
    console.print(table)
    if plot:
        console.print(f"confusion matrix written to {plot}")
    for why in report.skipped_files[:10]:
        err_console.print(f"skipped unreadable file: {why}", highlight=False)
    if report.n_skipped > 10:
        err_console.print(f"... and {report.n_skipped - 10} more")
