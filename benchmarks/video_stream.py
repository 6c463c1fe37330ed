"""Can this machine keep up with a video? measure_stream for each model x inference thread count, interleaved.

    .venv/bin/python benchmarks/video_stream.py [--models resnet18,resnet50] [--threads 1,2] [--rounds 3]

The clip is encoded here with PyAV from real photos (../shared hymenoptera bees, 1280x720,
30 fps, MPEG-4), so decode cost is that of a real 720p stream. Each round runs every
(model, threads) variant once (decode + preprocess + infer per frame, batch 1, random
weights: speed does not depend on weight values; threads are the runner's intra-op threads,
as `resnetkit video-bench --threads` sets them, on the backend auto picks with them); the table shows the median over rounds
and the load average at the start and end of the run. Writes results/video_stream.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

import av
from PIL import Image

from resnetkit import load_model
from resnetkit.backends.base import RunnerOptions
from resnetkit.core.fileio import write_text_atomic
from resnetkit.run.video import measure_stream

PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hymenoptera" / "val" / "bees"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,resnet50")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--frames", type=int, default=30, help="frames decoded and classified per variant per round")
    parser.add_argument("--output", default="results/video_stream.json")
    return parser.parse_args(argv)


def encode_clip(path: Path, frames: int, size: tuple[int, int] = (1280, 720), fps: int = 30) -> Path:
    photos = sorted(PHOTOS.glob("*.jpg"))[:max(1, frames // 10)]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for photo in photos:
            frame = av.VideoFrame.from_image(Image.open(photo).convert("RGB").resize(size, Image.Resampling.BICUBIC))
            for _ in range(10):
                container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    models = {(name, count): load_model(name, pretrained=False, options=RunnerOptions(batch_size=1, threads=count))
              for name in args.models.split(",") for count in threads}
    load_before = os.getloadavg()[0]
    runs: dict[tuple[str, int], list[dict]] = {variant: [] for variant in models}
    with tempfile.TemporaryDirectory() as tmp:
        clip = encode_clip(Path(tmp) / "bees_720p.mp4", args.frames)
        for round_index in range(args.rounds):
            for (name, count), samples in runs.items():
                report = measure_stream(models[name, count], clip, max_frames=args.frames)
                samples.append({"realtime_factor": report.realtime_factor, "decoded_per_s": report.decoded_per_s,
                                **report.per_frame_ms(), "load_average": os.getloadavg()[0]})
                print(f"round {round_index + 1}: {name} {count} thread(s): {report.decoded_per_s:.1f} frames/s", flush=True)
    load_after = os.getloadavg()[0]
    rows = []
    for (name, count), samples in runs.items():
        median = {key: statistics.median(s[key] for s in samples) for key in samples[0]}
        rows.append({"model": name, "threads": count, "ran": models[name, count].ran.label(), "rounds": len(samples),
                     **median, "samples": samples})
    print(f"\n720p MPEG-4 at 30 fps, {args.frames} frames per run, batch 1, medians of {args.rounds} interleaved rounds; "
          f"load average {load_before:.2f} -> {load_after:.2f} on {os.cpu_count()} cores")
    print(f"{'model':<12}{'threads':>8}{'frames/s':>10}{'RT factor':>11}{'decode ms':>11}{'prep ms':>9}{'infer ms':>10}"
          "  ran")
    for row in rows:
        print(f"{row['model']:<12}{row['threads']:>8}{row['decoded_per_s']:>10.1f}{row['realtime_factor']:>11.2f}"
              f"{row['decode_ms']:>11.1f}{row['preprocess_ms']:>9.1f}{row['infer_ms']:>10.1f}  {row['ran']}")
    write_text_atomic(args.output, json.dumps({"load_average": [load_before, load_after], "frames": args.frames,
                                               "rows": rows}, indent=2) + "\n")
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
