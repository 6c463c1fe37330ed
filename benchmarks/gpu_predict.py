"""``resnetkit predict`` on a GPU against the plain torchvision script people write, on the same JPEGs, interleaved.

The plain script: a Dataset of the files (PIL open, RGB, the weights' own transforms: resize 256, center-crop 224,
to tensor, normalize), a DataLoader with ``--workers`` worker processes and pinned memory, resnet50 in fp16
channels-last on the GPU, top-5 of each batch back on the CPU. resnetkit: ``predict()`` (the library call behind
``resnetkit predict``) with random weights, default options besides the batch size, writing Parquet part files.
Both sides are timed whole (building the model included, Python start-up not), in alternating order, after one
untimed run each (CUDA and cuDNN start-up; auto's tuning is cached by it). Prints a table, writes JSON (``-o``).

    python benchmarks/gpu_predict.py --data ../shared/data/cifar10/test --rounds 2 -o results/gpu/predict.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from resnetkit.batch import predict
from resnetkit.batch.engine import ModelRequest
from resnetkit.core.device import resolve_device, usable_cores
from resnetkit.core.fileio import write_text_atomic
from resnetkit.core.images import iter_image_paths

ROOT = Path(__file__).resolve().parents[1]


class Files(Dataset):
    def __init__(self, paths: list[str], transform) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        with Image.open(self.paths[index]) as image:
            return self.transform(image.convert("RGB"))


def plain_script(paths: list[str], batch_size: int, workers: int) -> int:
    """The plain script, start to end; returns the number of images labelled."""
    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V1
    model = torchvision.models.resnet50().cuda().half().eval().to(memory_format=torch.channels_last)
    loader = DataLoader(Files(paths, weights.transforms()), batch_size=batch_size, num_workers=workers,
                        pin_memory=True)
    labelled = 0
    with torch.inference_mode():
        for batch in loader:
            batch = batch.cuda(non_blocking=True).half().contiguous(memory_format=torch.channels_last)
            top5 = model(batch).float().softmax(1).topk(5)
            labelled += len(top5.indices.cpu())
    return labelled


def resnetkit_predict(paths: list[str], batch_size: int, workers: int | None) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "inputs.txt"
        listing.write_text("\n".join(paths))
        request = ModelRequest("resnet50", random_weights=True, batch_size=batch_size)
        summary = predict(request, [listing], Path(tmp) / "labels.parquet", workers=workers, progress=False)
    return summary.written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10" / "test"))
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=max(1, usable_cores() - 1), help="the plain script's workers")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("-o", "--output", default=str(ROOT / "results" / "gpu" / "predict.json"))
    args = parser.parse_args()
    device = resolve_device("cuda")
    paths = [str(p) for p in iter_image_paths([args.data])][:args.images]
    sides = {"plain DataLoader script": lambda: plain_script(paths, args.batch_size, args.workers),
             "resnetkit predict": lambda: resnetkit_predict(paths, args.batch_size, None)}
    for run in sides.values():  # untimed: CUDA, cuDNN and auto's tuning start up
        run()
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for round_ in range(args.rounds):
        for name in list(sides) if round_ % 2 == 0 else list(sides)[::-1]:
            started = time.perf_counter()
            assert sides[name]() == len(paths), f"{name} did not label every image"
            seconds[name].append(time.perf_counter() - started)
            print(f"round {round_} {name:24s} {len(paths) / seconds[name][-1]:8.1f} img/s", flush=True)
    rates = {name: len(paths) / statistics.median(values) for name, values in seconds.items()}
    ratio = rates["resnetkit predict"] / rates["plain DataLoader script"]
    print(f"{len(paths)} images of {args.data}, resnet50 fp16, batch {args.batch_size}, on {device.name}; "
          f"{args.rounds} rounds, alternating; median img/s: "
          + ", ".join(f"{n} {r:.0f}" for n, r in rates.items()) + f"; ratio {ratio:.2f}")
    write_text_atomic(args.output, json.dumps({
        "images": len(paths), "data": args.data, "batch_size": args.batch_size, "plain_workers": args.workers,
        "resnetkit_workers": "default (every usable core)", "cores": usable_cores(), "device": device.describe(),
        "seconds": seconds, "img_s": {n: round(r, 1) for n, r in rates.items()}, "ratio": round(ratio, 3),
        "load_average_1m": os.getloadavg()[0], "command": " ".join(sys.argv)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
