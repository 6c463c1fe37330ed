"""Classify video files and live streams frame by frame.

Frames are decoded by PyAV (FFmpeg), so every container and codec FFmpeg reads works, as
do ``rtsp://`` (and other network) URLs and ``/dev/videoN`` cameras. Frames are sampled
(``fps`` or ``every``), preprocessed like still images, batched, and classified; the
per-frame probabilities are smoothed over a window into labelled segments. The report
says how fast this ran compared with the source's own frame rate (the real-time factor).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from PIL import Image

from ..backends.base import RunInfo
from ..core.errors import ResnetkitError
from ..core.images import VIDEO_SUFFIXES, stack_inputs, to_model_input
from ..core.processes import keep_freed_memory_for_reuse
from .loading import Classifier, load_model
from .classify import Prediction, top_k as top_k_predictions

STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
CAMERA_PREFIX = "/dev/video"
# The fewest classified frames a keeps-up verdict rests on. The factor is a mean over the frames timed, and with
# fewer samples one odd forward pass (the scheduler, a background process) moves it too far: with 10, one pass
# that takes twice as long moves the mean by a tenth. 10 is also what --fps 1 gets from video-bench's default
# 300 frames of a 30 fps source.
MIN_VERDICT_FRAMES = 10
ANIMATION_FORMATS = ("gif", "apng")  # FFmpeg's demuxers of picture formats that may hold several frames


class VideoError(ResnetkitError):
    """A video or stream cannot be opened or stops decoding part-way."""


def is_video_source(ref: str | os.PathLike[str]) -> bool:
    """True for video files (by suffix), stream URLs and ``/dev/videoN`` cameras."""
    text = str(ref)
    return (text.lower().startswith(STREAM_SCHEMES) or text.startswith(CAMERA_PREFIX)
            or Path(text).suffix.lower() in VIDEO_SUFFIXES)


@dataclass(frozen=True)
class Sampling:
    """Which decoded frames are classified: ``fps`` per second of video, or every ``every``-th frame."""

    fps: float | None = None
    every: int | None = None

    def __post_init__(self) -> None:
        if self.fps is not None and self.every is not None:
            raise VideoError("Give either --fps or --every, not both.")
        if self.fps is not None and self.fps <= 0:
            raise VideoError(f"--fps must be above 0 (got {self.fps}).")
        if self.every is not None and self.every < 1:
            raise VideoError(f"--every must be at least 1 (got {self.every}).")

    def slot(self, index: int, time_s: float) -> int:
        """Frames in the same slot are one sample; the first frame of each slot is kept."""
        if self.fps is not None:
            return math.floor(time_s * self.fps + 1e-6)
        return index // (self.every or 1)

    def describe(self, source_fps: float | None = None) -> str:
        """What is classified; an ``fps`` above the source's (average) rate classifies every frame, and says so."""
        if self.fps is not None and source_fps and self.fps > source_fps:
            return (f"every frame, {source_fps:.2f} per second of video: --fps {self.fps:g} is above the source's "
                    "frame rate")
        if self.fps is not None:
            return f"{self.fps:g} frames per second of video"
        return f"every {self.every} frames" if self.every and self.every > 1 else "every frame"


@dataclass
class FrameResult:
    """Top-k predictions for one classified frame; ``frame`` counts decoded frames from 0."""

    source: str
    frame: int
    time_s: float
    predictions: list[Prediction]


@dataclass
class Segment:
    """Consecutive classified frames with the same smoothed top-1 label."""

    label: str
    start_s: float
    end_s: float
    frames: int
    score: float  # mean smoothed probability of ``label`` over the segment


@dataclass
class StageTimes:
    """Wall-clock seconds spent in each stage (decode covers every decoded frame, sampled or not)."""

    decode_s: float = 0.0
    preprocess_s: float = 0.0
    infer_s: float = 0.0


@dataclass
class VideoReport:
    """Everything ``classify`` found in one video or stream, with how fast it ran."""

    source: str
    source_fps: float | None
    width: int
    height: int
    sampling: str
    ran: RunInfo  # what classified the frames, and where
    batch_size: int
    frames_decoded: int = 0
    frames: list[FrameResult] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    elapsed_s: float = 0.0
    stages: StageTimes = field(default_factory=StageTimes)
    error: str | None = None

    @property
    def classified_per_s(self) -> float:
        return len(self.frames) / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def decoded_per_s(self) -> float:
        return self.frames_decoded / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def realtime_factor(self) -> float | None:
        """Seconds of video processed per second of wall clock (>= 1: keeps up with the source)."""
        if not self.source_fps or not self.elapsed_s:
            return None
        return self.decoded_per_s / self.source_fps

    def why_no_verdict(self) -> str | None:
        """Why this run cannot say whether it keeps up with the source (no frame rate, too few frames), or None."""
        if not self.source_fps:
            return "the source declares no frame rate to compare with"
        if len(self.frames) < MIN_VERDICT_FRAMES:
            return (f"only {len(self.frames)} frame(s) were classified, too few to judge (at least "
                    f"{MIN_VERDICT_FRAMES} are needed): use a longer clip, a larger --max-frames, or a smaller --every "
                    "or larger --fps")
        return None

    @property
    def keeps_up(self) -> bool | None:
        """Whether this machine kept up with the source (real-time factor at least 1); None without a verdict."""
        return None if self.why_no_verdict() else (self.realtime_factor or 0.0) >= 1.0

    def per_frame_ms(self) -> dict[str, float]:
        """Mean milliseconds per classified frame in each stage, and per decoded frame for decoding."""
        classified = max(1, len(self.frames))
        return {
            "decode_ms": 1000 * self.stages.decode_s / max(1, self.frames_decoded),
            "preprocess_ms": 1000 * self.stages.preprocess_s / classified,
            "infer_ms": 1000 * self.stages.infer_s / classified,
        }

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["ran"]  # its facts go in flat, as in every report: backend, precision, device...
        data.update(self.ran.to_dict())
        data.update(classified_per_s=self.classified_per_s, decoded_per_s=self.decoded_per_s,
                    realtime_factor=self.realtime_factor, keeps_up=self.keeps_up, no_verdict=self.why_no_verdict(),
                    per_frame_ms=self.per_frame_ms())
        return data


def _open(source: str) -> Any:
    import av

    if not source.lower().startswith(STREAM_SCHEMES) and not Path(source).exists():
        raise VideoError(f"No such file: {source}")
    try:
        container = av.open(source, format="v4l2" if source.startswith(CAMERA_PREFIX) else None, timeout=30.0)
    except av.FFmpegError as exc:
        raise VideoError(f"{source} could not be opened as a video ({exc}). Is it a video file or a reachable "
                         "stream URL? Any container and codec FFmpeg reads works; an MP4 cut short before its "
                         "index (moov atom) cannot be opened at all: re-download or re-encode it.") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{source} has no video stream.")
    if _is_still(container):
        container.close()
        raise VideoError(f"{source} is a still image, not a video: give a video file, stream URL or camera, and "
                         "classify still images with 'resnetkit classify MODEL IMAGE' (named .jpg, .png...).")
    return container


def _is_still(container: Any) -> bool:
    """A picture, not a video: read by one of FFmpeg's image readers (image2, jpeg_pipe, png_pipe...), which give
    it a made-up frame rate of 25 fps, or an animation format holding one frame (a GIF, which gets 100 fps). A
    one-frame MP4 is still a video: 'classify' does not read it as a picture."""
    name = container.format.name
    return (name == "image2" or name.endswith("_pipe")
            or (name in ANIMATION_FORMATS and container.streams.video[0].frames == 1))


def _frame_rate(stream: Any) -> float | None:
    rate = stream.average_rate or stream.base_rate or stream.guessed_rate
    return float(rate) if rate else None


def _upright(frame: Any) -> Image.Image:
    """The frame as a player shows it: turned by the rotation of its display matrix (a phone's portrait video
    stores landscape pixels and says so there), as still images are turned by their EXIF orientation."""
    image = frame.to_image()
    return image.rotate(frame.rotation, expand=True) if frame.rotation else image


def _decode(container: Any, source: str, stages: StageTimes) -> Iterator[tuple[int, float, Any]]:
    """Yield ``(index, time_s, av.VideoFrame)``, ``time_s`` from the start of the stream (MPEG-TS streams, for
    one, start at a non-zero time; without a declared start, the first frame's); raise :class:`VideoError` if
    decoding stops early."""
    import av

    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    fps = _frame_rate(stream) or 0.0
    start = None if stream.start_time is None else float(stream.start_time * stream.time_base)
    frames = container.decode(stream)
    index = -1
    while True:
        started = time.perf_counter()
        try:
            frame = next(frames)
        except StopIteration:
            break
        except av.FFmpegError as exc:
            raise VideoError(_stopped(source, index + 1, f"decoding failed ({exc})")) from None
        finally:
            stages.decode_s += time.perf_counter() - started
        index += 1
        if frame.time is None:
            time_s = index / (fps or 1.0)
        else:
            start = frame.time if start is None else start
            time_s = frame.time - start
        yield index, time_s, frame
    declared = stream.frames
    if declared and index + 1 < declared:
        raise VideoError(_stopped(source, index + 1, f"the file ends after {index + 1} of the {declared} frames "
                                                      "its header declares"))
    if not declared and index >= 0 and len(container.streams) == 1 and container.duration:
        # Matroska/WebM declare a duration, not a frame count; with other streams it may be theirs
        shown_s, length_s = time_s + 1 / (fps or 1.0), container.duration / av.time_base
        if length_s - shown_s > max(2 / (fps or 1.0), 0.1):
            raise VideoError(_stopped(source, index + 1, f"the file ends at {shown_s:.2f} s of the {length_s:.2f} s "
                                                          "its header declares"))


def _stopped(source: str, decoded: int, reason: str) -> str:
    return (f"{source}: {reason}; the video is truncated or corrupted. The {decoded} frame(s) decoded before "
            "that were classified; re-encode or re-download the file to classify the rest.")


def classify_video(
    model: Classifier | str | os.PathLike[str],
    source: str | os.PathLike[str],
    *,
    fps: float | None = None,
    every: int | None = None,
    top_k: int = 5,
    batch_size: int = 16,
    smooth: int = 5,
    max_frames: int | None = None,
) -> VideoReport:
    """Decode ``source`` (file, stream URL or camera), classify sampled frames, smooth them into segments.

    ``fps`` keeps that many frames per second of video, ``every`` keeps every N-th frame
    (default: every frame). ``smooth`` is the window (in classified frames) over which
    probabilities are averaged before labelling segments. ``max_frames`` stops after that
    many decoded frames (for endless streams). A source that cannot be opened or stops
    decoding does not raise: the frames done so far are kept and ``error`` says what happened.
    On glibc it first has malloc keep freed memory for reuse, process-wide
    (:func:`~resnetkit.core.processes.keep_freed_memory_for_reuse`: 720p frames ran 1.5x faster).
    """
    sampling = Sampling(fps, every)
    if top_k < 1 or batch_size < 1 or smooth < 1:
        raise VideoError("--top-k, --batch-size and --smooth must be at least 1.")
    keep_freed_memory_for_reuse()
    classifier = model if isinstance(model, Classifier) else load_model(model)
    source = str(source)
    try:
        container = _open(source)
    except VideoError as exc:  # like an unreadable image: this source fails, the others go on
        return VideoReport(source, None, 0, 0, sampling.describe(), classifier.ran, batch_size, error=str(exc))
    stream = container.streams.video[0]
    source_fps = _frame_rate(stream)
    report = VideoReport(source, source_fps, stream.codec_context.width, stream.codec_context.height,
                         sampling.describe(source_fps), classifier.ran, batch_size)
    probabilities: list[torch.Tensor] = []
    pending: list[tuple[int, float, torch.Tensor]] = []

    def flush() -> None:
        started = time.perf_counter()
        probs = classifier.probabilities(stack_inputs([t for _, _, t in pending])).float()
        report.stages.infer_s += time.perf_counter() - started
        probabilities.append(probs)
        for (index, time_s, _), preds in zip(pending, top_k_predictions(probs, classifier.meta.categories, top_k)):
            report.frames.append(FrameResult(source, index, round(time_s, 6), preds))
        pending.clear()

    preprocessing, last_slot, end_s = classifier.meta.preprocessing, -1, 0.0
    started = time.perf_counter()
    try:
        with container:
            for index, time_s, frame in _decode(container, source, report.stages):
                report.frames_decoded = index + 1
                if index == 0 and frame.rotation % 180:  # shown turned by a quarter: as wide as it is high
                    report.width, report.height = report.height, report.width
                end_s = time_s + 1 / (report.source_fps or 1.0)
                slot = sampling.slot(index, time_s)
                if slot > last_slot:
                    last_slot = slot
                    prep_started = time.perf_counter()
                    pending.append((index, time_s, to_model_input(_upright(frame), preprocessing)))
                    report.stages.preprocess_s += time.perf_counter() - prep_started
                    if len(pending) == batch_size:
                        flush()
                if max_frames is not None and report.frames_decoded >= max_frames:
                    break
    except VideoError as exc:
        report.error = str(exc)
    except KeyboardInterrupt:
        report.error = f"{source}: interrupted after {report.frames_decoded} decoded frames."
    if pending:
        flush()
    report.elapsed_s = time.perf_counter() - started
    if probabilities:
        report.segments = smooth_segments(report.frames, torch.cat(probabilities), classifier.meta.categories,
                                          smooth, end_s)
    return report


def smooth_segments(frames: Sequence[FrameResult], probabilities: torch.Tensor, categories: Sequence[str],
                    window: int, end_s: float) -> list[Segment]:
    """Average each frame's probabilities over a centred ``window`` of frames, then merge equal top-1 runs."""
    count = probabilities.shape[0]
    half = window // 2
    cumulative = torch.cat([torch.zeros(1, probabilities.shape[1]), probabilities.double().cumsum(0)])
    positions = torch.arange(count)
    low, high = (positions - half).clamp(min=0), (positions + half + 1).clamp(max=count)
    smoothed = (cumulative[high] - cumulative[low]) / (high - low).unsqueeze(1)
    scores, labels = smoothed.max(dim=1)
    segments: list[Segment] = []
    position = 0
    for label, run in groupby(labels.tolist()):
        length = len(list(run))
        members = slice(position, position + length)
        position += length
        stop = frames[position].time_s if position < count else end_s
        segments.append(Segment(categories[label], frames[members.start].time_s, round(stop, 6), length,
                                round(float(scores[members].mean()), 6)))
    return segments


def measure_stream(
    model: Classifier | str | os.PathLike[str],
    source: str | os.PathLike[str],
    *,
    fps: float | None = None,
    every: int | None = None,
    max_frames: int | None = 300,
) -> VideoReport:
    """Can this machine keep up with ``source``? Decode + preprocess + infer frame by frame, timed.

    Frames are classified one at a time as a live consumer would (batch 1) with the model's
    default backend, after one warm-up forward pass; ``realtime_factor`` >= 1 means yes.
    """
    classifier = model if isinstance(model, Classifier) else load_model(model)
    classifier.logits(torch.zeros(1, *classifier.meta.preprocessing.input_shape))  # warm-up, not timed
    report = classify_video(classifier, source, fps=fps, every=every, top_k=1, batch_size=1, max_frames=max_frames)
    if report.error and not report.frames_decoded:
        raise VideoError(report.error)
    return report

