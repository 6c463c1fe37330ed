"""Video and streams: clips encoded here with PyAV from real CIFAR photos, classified frame by frame."""

from __future__ import annotations

import json
import platform
import struct
import subprocess
import sys
from pathlib import Path

import av
import pytest
import torch
from PIL import Image

from resnetkit import classify, load_model
from resnetkit.run.video import (FrameResult, VideoError, VideoReport, classify_video, is_video_source, measure_stream,
                                 smooth_segments)

FPS = 25


def encode_clip(path: Path, images: list[Path], repeat: int = 5, size: tuple[int, int] = (128, 128),
                codec: str = "mpeg4") -> Path:
    """A clip at 25 fps showing each image for ``repeat`` frames (an MP4 has its moov atom first, so a cut file opens)."""
    options = {"movflags": "faststart"} if path.suffix == ".mp4" else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for image in images:
            frame = av.VideoFrame.from_image(Image.open(image).convert("RGB").resize(size, Image.Resampling.BICUBIC))
            for _ in range(repeat):
                container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def ship_clip(cifar_test_dir, tmp_path_factory) -> Path:
    """2 s of video: 10 real CIFAR-10 test photos of ships, 5 frames each, upscaled to 128x128."""
    photos = sorted((cifar_test_dir / "ship").glob("*.jpg"))[:10]
    return encode_clip(tmp_path_factory.mktemp("video") / "ships.mp4", photos)


@pytest.fixture(scope="module")
def ship_clip_ts(cifar_test_dir, tmp_path_factory) -> Path:
    """The same 2 s of ships as MPEG-2 video in MPEG-TS, whose timestamps start at 0.04 s, not 0."""
    if "mpeg2video" not in av.codecs_available:
        pytest.skip("this PyAV build has no mpeg2video encoder")
    photos = sorted((cifar_test_dir / "ship").glob("*.jpg"))[:10]
    return encode_clip(tmp_path_factory.mktemp("video") / "ships.ts", photos, codec="mpeg2video")


@pytest.fixture(scope="module")
def random_model():
    return load_model("cifar_resnet20", pretrained=False)


def _cli(*args: str) -> subprocess.CompletedProcess:
    from conftest import run_cli  # in this process: a fresh one per call cost ~5 s of imports

    return run_cli(*args)


def with_display_rotation(path: Path, degrees: int) -> Path:
    """``path`` (an MP4) with a display matrix in its track header that turns the picture by ``degrees`` clockwise,
    as a phone records portrait video (PyAV cannot write one): ISO 14496-12 tkhd, version 0."""
    data = bytearray(path.read_bytes())
    matrix = data.index(b"tkhd") + 44  # after the version, times, track id, duration, layer, group and volume
    one, w = 1 << 16, 1 << 30  # 16.16 and 2.30 fixed point
    data[matrix:matrix + 36] = struct.pack(">9i", *{90: (0, one, 0, -one, 0, 0, 0, 0, w),
                                                     270: (0, -one, 0, one, 0, 0, 0, 0, w)}[degrees])
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("degrees", [90, 270])
def test_a_portrait_phone_video_is_classified_upright(cifar_weights, cifar_test_dir, tmp_path, degrees):
    cars = sorted((cifar_test_dir / "automobile").glob("*.jpg"))[:4]
    upright = classify_video("cifar_resnet20", encode_clip(tmp_path / "upright.mp4", cars, repeat=1, size=(128, 96)),
                             top_k=1)
    stored = Image.Transpose.ROTATE_90 if degrees == 90 else Image.Transpose.ROTATE_270  # turned the other way
    sideways = [Image.open(c).transpose(stored).save(tmp_path / c.name) or tmp_path / c.name for c in cars]
    clip = with_display_rotation(encode_clip(tmp_path / "portrait.mp4", sideways, repeat=1, size=(96, 128)), degrees)
    turned = classify_video("cifar_resnet20", clip, top_k=1)
    assert (turned.width, turned.height) == (128, 96)  # as shown
    assert [f.predictions[0].label for f in turned.frames] == [f.predictions[0].label for f in upright.frames]


@pytest.mark.slow
def test_clip_of_one_class_gets_that_class_for_most_frames(cifar_weights, ship_clip):
    report = classify_video("cifar_resnet20", ship_clip, top_k=3)
    assert report.error is None and report.frames_decoded == 50 and len(report.frames) == 50
    assert report.source_fps == FPS and (report.width, report.height) == (128, 128)
    top1 = [f.predictions[0].label for f in report.frames]
    assert top1.count("ship") >= 0.8 * len(top1)
    longest = max(report.segments, key=lambda s: s.frames)
    assert longest.label == "ship" and longest.frames >= 25
    assert sum(s.frames for s in report.segments) == 50
    assert report.segments[0].start_s == 0.0 and report.segments[-1].end_s == pytest.approx(2.0)
    assert [f.time_s for f in report.frames[:3]] == pytest.approx([0.0, 0.04, 0.08])


@pytest.mark.slow
@pytest.mark.parametrize("sampling, expected", [
    ({"every": 7}, [0, 7, 14, 21, 28, 35, 42, 49]),
    ({"fps": 5}, [0, 5, 10, 15, 20, 25, 30, 35, 40, 45]),
    ({"fps": 100}, list(range(50))),  # above the source's rate: every frame once
    ({}, list(range(50))),
])
def test_sampling_picks_the_expected_frames(random_model, ship_clip, sampling, expected):
    report = classify_video(random_model, ship_clip, batch_size=4, **sampling)
    assert [f.frame for f in report.frames] == expected
    assert report.frames_decoded == 50  # decoding is sequential: every frame is decoded, only samples classified


def test_fps_above_the_source_rate_says_every_frame_was_classified(random_model, ship_clip):
    report = classify_video(random_model, ship_clip, fps=1000, max_frames=10)
    assert len(report.frames) == report.frames_decoded == 10
    assert report.sampling == "every frame, 25.00 per second of video: --fps 1000 is above the source's frame rate"
    assert classify_video(random_model, ship_clip, fps=5, max_frames=10).sampling == "5 frames per second of video"


def test_mpeg_ts_times_start_at_the_start_of_the_stream(random_model, ship_clip_ts):
    with av.open(str(ship_clip_ts)) as container:  # what made the times wrong: the stream starts at 0.04 s
        assert container.streams.video[0].start_time * container.streams.video[0].time_base > 0
    report = classify_video(random_model, ship_clip_ts, every=10)
    assert report.error is None and report.frames_decoded == 50
    assert [f.time_s for f in report.frames] == pytest.approx([0.0, 0.4, 0.8, 1.2, 1.6])
    assert report.segments[0].start_s == 0.0 and report.segments[-1].end_s == pytest.approx(2.0)


def test_sampling_options_are_checked(random_model, ship_clip):
    with pytest.raises(VideoError, match="either --fps or --every"):
        classify_video(random_model, ship_clip, fps=5, every=2)
    with pytest.raises(VideoError, match="--fps must be above 0"):
        classify_video(random_model, ship_clip, fps=0)


def test_max_frames_stops_a_stream_early(random_model, ship_clip):
    report = classify_video(random_model, ship_clip, every=2, max_frames=12)
    assert report.frames_decoded == 12 and [f.frame for f in report.frames] == [0, 2, 4, 6, 8, 10]
    assert report.error is None


@pytest.mark.slow
def test_truncated_video_keeps_the_frames_done_and_says_so(cifar_weights, ship_clip, tmp_path):
    data = ship_clip.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 6 // 10])
    report = classify_video("cifar_resnet20", cut, top_k=1)
    assert 0 < report.frames_decoded < 50 and len(report.frames) == report.frames_decoded
    assert report.error and "truncated or corrupted" in report.error
    assert f"{report.frames_decoded} of the 50 frames" in report.error
    assert [f.predictions[0].label for f in report.frames].count("ship") >= 0.6 * len(report.frames)


def test_a_cut_matroska_file_is_found_from_its_declared_duration(tmp_path):
    from conftest import make_image

    photos = [make_image(tmp_path / f"{i}.png", seed=i) for i in range(10)]
    whole = encode_clip(tmp_path / "whole.mkv", photos)  # 2 s; Matroska declares no frame count
    model = load_model("cifar_resnet20", pretrained=False, backend="eager")
    assert classify_video(model, str(whole), top_k=1).error is None
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    report = classify_video(model, str(cut), top_k=1)
    assert 0 < report.frames_decoded < 50 and len(report.frames) == report.frames_decoded
    assert f"the file ends at {report.frames_decoded / FPS:.2f} s of the 2.00 s its header declares" in report.error


@pytest.mark.slow
def test_cli_reports_truncation_and_keeps_results(cifar_weights, ship_clip, tmp_path):
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(ship_clip.read_bytes()[:5000])
    result = _cli("classify", "cifar_resnet20", str(cut), "--json", "-k", "1")
    assert result.returncode == 1
    video = json.loads(result.stdout)["videos"][0]
    assert video["frames"] and "truncated or corrupted" in video["error"]


@pytest.mark.slow
def test_cli_json_has_per_frame_results_segments_and_realtime_factor(cifar_weights, ship_clip):
    result = _cli("classify", "cifar_resnet20", str(ship_clip), "--fps", "5", "--json", "-k", "2")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    video = data["videos"][0]
    assert data["results"] == [] and video["source"] == str(ship_clip)
    assert [f["frame"] for f in video["frames"]] == [0, 5, 10, 15, 20, 25, 30, 35, 40, 45]
    first = video["frames"][0]
    assert set(first) == {"source", "frame", "time_s", "predictions"} and len(first["predictions"]) == 2
    assert video["frames"][1]["time_s"] == pytest.approx(0.2)
    assert max(video["segments"], key=lambda s: s["frames"])["label"] == "ship"
    assert video["realtime_factor"] == pytest.approx(video["decoded_per_s"] / 25.0)
    ran = ("backend", "precision", "device", "device_name", "label")  # what ran, as in the image results
    assert {k: video[k] for k in ran} == {k: data[k] for k in ran} and "ran" not in video


@pytest.mark.slow
def test_cli_text_output_prints_segments_and_realtime_factor(cifar_weights, ship_clip):
    result = _cli("classify", "cifar_resnet20", str(ship_clip), "--every", "5")
    assert result.returncode == 0, result.stderr
    assert "50 frames decoded (128x128, 25.00 fps, 2.00 s), 10 classified (every 5 frames)" in result.stdout
    assert "ship (" in result.stdout and "real-time factor" in result.stdout and "load average" in result.stdout
    what_ran = result.stderr.splitlines()[0].removeprefix("cifar_resnet20: ")  # e.g. openvino/bf16 on CPU (auto)
    assert f"per classified frame ({what_ran}, batch 16, " in result.stdout


@pytest.mark.slow
def test_not_a_video_is_a_clear_error(cifar_weights, tmp_path):
    fake = tmp_path / "notes.mp4"
    fake.write_text("not a video\n" * 20)
    result = _cli("classify", "cifar_resnet20", str(fake), str(tmp_path / "missing.mkv"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "could not be opened as a video" in result.stdout and "No such file" in result.stdout
    assert "2 of 2 file(s) could not be classified" in result.stderr


def test_smoothing_absorbs_a_single_outlier_frame():
    probs = torch.tensor([[0.9, 0.1]] * 4 + [[0.2, 0.8]] + [[0.9, 0.1]] * 4)
    frames = [FrameResult("clip", i, i / 10, []) for i in range(9)]
    smoothed = smooth_segments(frames, probs, ["a", "b"], window=5, end_s=0.9)
    assert [(s.label, s.frames, s.start_s, s.end_s) for s in smoothed] == [("a", 9, 0.0, 0.9)]
    raw = smooth_segments(frames, probs, ["a", "b"], window=1, end_s=0.9)
    assert [(s.label, s.frames, s.start_s, s.end_s) for s in raw] == [("a", 4, 0.0, 0.4), ("b", 1, 0.4, 0.5),
                                                                       ("a", 4, 0.5, 0.9)]


def test_measure_stream_times_every_stage(random_model, ship_clip):
    report = measure_stream(random_model, ship_clip, max_frames=20)
    assert report.frames_decoded == 20 and len(report.frames) == 20 and report.batch_size == 1
    stages = report.per_frame_ms()
    assert all(stages[k] > 0 for k in ("decode_ms", "preprocess_ms", "infer_ms"))
    assert report.realtime_factor == pytest.approx(20 / report.elapsed_s / FPS)
    assert report.ran == random_model.ran and report.to_dict()["label"] == random_model.ran.label()


def test_frames_are_preprocessed_like_still_images(random_model, ship_clip, tmp_path, monkeypatch):
    # the fast image path (classify's): a frame saved losslessly and classified as an image scores the same.
    # Not torchvision's transforms: their torch ops run on torch's intra-op threads, which then spin beside the
    # next forward pass of OpenVINO or ONNX Runtime (30-40 % slower per frame on 2 cores, docs/video.md)
    from resnetkit.core.spec import Preprocessing

    def torch_transform(self):
        raise AssertionError("a video frame went through torchvision's transforms")

    with monkeypatch.context() as patch:
        patch.setattr(Preprocessing, "transform", torch_transform)
        report = classify_video(random_model, ship_clip, top_k=3, max_frames=3)
    with av.open(str(ship_clip)) as container:
        frames = [frame.to_image() for _, frame in zip(range(3), container.decode(video=0))]
    for i, frame in enumerate(frames):
        frame.save(tmp_path / f"{i}.png")
    stills = classify(random_model, [tmp_path / f"{i}.png" for i in range(3)], top_k=3)
    for video_frame, still in zip(report.frames, stills):
        assert [p.label for p in video_frame.predictions] == [p.label for p in still.predictions]
        assert [p.score for p in video_frame.predictions] == pytest.approx([p.score for p in still.predictions], abs=1e-5)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc setting; this libc is not glibc")
def test_freed_frame_memory_stays_in_the_process_for_the_next_frame():
    # in a fresh interpreter (no thresholds raised yet): a 2 MB block gets its own mmap before, the heap after
    script = """
import ctypes
from resnetkit.core.processes import keep_freed_memory_for_reuse

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype, libc.malloc.restype = MallInfo2, ctypes.c_void_p

def own_mmaps_of_a_2mb_block():
    block = ctypes.c_void_p(libc.malloc(2 << 20))
    mapped = libc.mallinfo2().hblks
    libc.free(block)
    return mapped - libc.mallinfo2().hblks

print(own_mmaps_of_a_2mb_block(), keep_freed_memory_for_reuse(), own_mmaps_of_a_2mb_block())
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["1", "True", "0"]


def test_video_bench_threads_are_the_model_runners_not_a_global_switch(ship_clip):
    from conftest import run_cli

    before = torch.get_num_threads()
    args = ("video-bench", "cifar_resnet20", ship_clip, "--random-weights", "--backend", "eager", "--device", "cpu",
            "--threads", "1", "--max-frames", "10")
    data = json.loads(run_cli(*args, "--json").stdout)
    assert (data["label"], data["threads"], data["frames_decoded"]) == ("eager/fp32 on CPU", 1, 10)
    plain = run_cli(*args)
    assert "per classified frame (eager/fp32 on CPU, batch 1, 1 threads, 1 run of" in plain.stdout
    assert torch.get_num_threads() == before


BENCH = ("video-bench", "cifar_resnet20", "--random-weights", "--backend", "eager", "--device", "cpu")


@pytest.mark.parametrize("name", ["photo.jpg", "photo.gif"])  # a one-frame GIF: FFmpeg gives it 100 fps
def test_video_bench_refuses_a_still_image(tmp_path, name):
    from conftest import make_image, run_cli

    photo = make_image(tmp_path / name)
    result = run_cli(*BENCH, photo)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (f"error: {photo} is a still image, not a video: give a video file, stream URL or camera, "
                             "and classify still images with 'resnetkit classify MODEL IMAGE' (named .jpg, .png...).\n")


def test_a_one_frame_mp4_is_a_video_of_one_frame(tmp_path):
    from conftest import make_image

    clip = encode_clip(tmp_path / "one.mp4", [make_image(tmp_path / "a.png")], repeat=1)
    report = classify_video(load_model("cifar_resnet20", pretrained=False, backend="eager"), str(clip), top_k=1)
    assert report.error is None and report.frames_decoded == 1 and len(report.frames) == 1


@pytest.mark.parametrize("every, classified, verdict", [("6", 9, False), ("5", 10, True)])
def test_video_bench_judges_only_from_enough_frames(ship_clip, every, classified, verdict):
    from conftest import run_cli

    result = run_cli(*BENCH, ship_clip, "--every", every)
    assert result.returncode == 0, result.stderr
    last = result.stdout.splitlines()[-1]
    assert last.endswith(" on this machine.") == verdict
    assert last.startswith("No verdict on whether cifar_resnet20 keeps up with") != verdict
    assert (f"only {classified} frame(s) were classified, too few to judge (at least 10 are needed): use a longer "
            "clip" in last) != verdict
    as_json = json.loads(run_cli(*BENCH, ship_clip, "--every", every, "--json").stdout)
    assert (as_json["keeps_up"] is not None) == verdict and (as_json["no_verdict"] is None) == verdict


def test_no_verdict_without_a_frame_rate(random_model):
    report = VideoReport("rtsp://cam", None, 640, 480, "every frame", random_model.ran, 1, frames_decoded=50,
                         frames=[FrameResult("rtsp://cam", i, i / 25, []) for i in range(50)], elapsed_s=1.0)
    assert report.realtime_factor is None and report.why_no_verdict() == "the source declares no frame rate to compare with"
    assert report.keeps_up is None and report.to_dict()["no_verdict"] == report.why_no_verdict()


def test_video_sources_are_recognised():
    assert all(map(is_video_source, ["a.mp4", "B.MKV", "rtsp://cam/stream", "/dev/video0", "x.webm"]))
    assert not any(map(is_video_source, ["a.jpg", "folder", "model.onnx"]))
