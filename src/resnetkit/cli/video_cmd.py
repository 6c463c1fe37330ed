"""Video in the CLI: the report printed by ``classify`` for videos, and ``resnetkit video-bench``."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from ..backends.base import RunnerOptions
from ..core.device import resolve_device
from ..run.loading import load_model
from ..run.video import VideoReport, measure_stream
from .app import (BackendOpt, DeviceOpt, JsonFlag, ModelArg, PrecisionOpt, RandomWeightsFlag, WeightsOpt, app, console,
                  default, err_console, ms_text, print_json, styled)

FpsOpt = Annotated[float | None, typer.Option("--fps", help=default(
    "Videos: classify this many frames per second of video.", "every frame"))]
EveryOpt = Annotated[int | None, typer.Option("--every", min=1, help=default(
    "Videos: classify every N-th frame.", "every frame"))]
SmoothOpt = Annotated[int, typer.Option("--smooth", min=1, help="Videos: average probabilities over this many classified frames before labelling segments.")]
MaxFramesOpt = Annotated[int | None, typer.Option("--max-frames", min=1, help=default(
    "Videos and streams: stop after N decoded frames.", "the whole video"))]


def _rate(report: VideoReport) -> str:
    return f"{report.source_fps:.2f} fps" if report.source_fps else "unknown frame rate"


def _timing_line(report: VideoReport) -> str:
    ms = report.per_frame_ms()
    factor = report.realtime_factor
    head = f"real-time factor {factor:.2f}x" if factor is not None else "real-time factor unknown (no frame rate)"
    return (f"{head}: {report.decoded_per_s:.1f} frames decoded/s vs the source's {_rate(report)}; "
            f"decode {ms_text(ms['decode_ms'])} ms per decoded frame, preprocess {ms_text(ms['preprocess_ms'])} ms + "
            f"infer {ms_text(ms['infer_ms'])} ms per classified frame ({report.ran.label()}, "
            f"batch {report.batch_size}, {_threads(report)}, 1 run of {report.elapsed_s:.2f} s, "
            f"load average {os.getloadavg()[0]:.2f})")


def _threads(report: VideoReport) -> str:
    threads = report.ran.threads
    return f"{threads} threads" if threads else "the backend's default threads"


def print_video_report(report: VideoReport) -> None:
    """Segments, then the real-time factor and any error (after the frames that were done)."""
    if report.error and not report.frames_decoded:
        console.print(styled(("error:", "red"), f" {report.error}"), highlight=False)
        return
    duration = report.frames_decoded / report.source_fps if report.source_fps else 0.0
    console.print(f"{report.source}: {report.frames_decoded} frames decoded ({report.width}x{report.height}, "
                  f"{_rate(report)}, {duration:.2f} s), {len(report.frames)} classified ({report.sampling})",
                  highlight=False)
    for segment in report.segments:
        console.print(f"  {segment.start_s:8.2f} - {segment.end_s:8.2f} s  {segment.label} "
                      f"({100 * segment.score:.1f} % smoothed, {segment.frames} frames)", highlight=False)
    console.print(_timing_line(report), highlight=False)
    if report.error:
        console.print(styled(("error:", "red"), f" {report.error}"), highlight=False)


@app.command("video-bench")
def video_bench_command(
    model: ModelArg,
    source: Annotated[str, typer.Argument(help="Video file, stream URL (rtsp://...) or camera (/dev/video0).")],
    fps: FpsOpt = None,
    every: EveryOpt = None,
    max_frames: Annotated[int, typer.Option("--max-frames", min=1, help="Frames to decode and time.")] = 300,
    weights: WeightsOpt = None,
    random_weights: RandomWeightsFlag = False,
    backend: BackendOpt = None,
    precision: PrecisionOpt = None,
    device: DeviceOpt = "auto",
    threads: Annotated[int | None, typer.Option("--threads", min=1, help=default(
        "Intra-op threads of the model on the CPU.", "the backend's; auto measures one thread and every core"))] = None,
    json_output: JsonFlag = False,
) -> None:
    """Can this machine keep up with this video or stream? Decode + preprocess + infer per frame (batch 1), timed."""
    options = RunnerOptions(batch_size=1, precision=precision, threads=threads, device=resolve_device(device))
    classifier = load_model(model, weights=weights, pretrained=not random_weights, backend=backend, options=options)
    report = measure_stream(classifier, source, fps=fps, every=every, max_frames=max_frames)
    if json_output:
        print_json({"model": classifier.meta.name, "load_average": os.getloadavg()[0], **report.to_dict()})
    else:
        console.print(_timing_line(report), highlight=False)
        name, what = classifier.meta.name, f"up with {report.source} ({report.sampling})"
        if report.keeps_up is None:
            console.print(f"No verdict on whether {name} keeps {what}: {report.why_no_verdict()}.", highlight=False)
        else:
            console.print(f"{name} {'keeps' if report.keeps_up else 'does not keep'} {what} on this machine.",
                          highlight=False)
        if report.error:
            err_console.print(styled(("error:", "red"), f" {report.error}"), highlight=False)
    if report.error:
        raise typer.Exit(1)
