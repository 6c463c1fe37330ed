"""Training throughput (img/s): the trainer's own step on synthetic data against the real ``train`` path.

(a) synthetic: random uint8 batches already on the device through the Trainer's own step
    (``StepRunner.train_batch``: the same model, optimizer, precision, memory format and compilation
    that ``resnetkit train`` uses), after warm-up steps, timed as one synchronised block of steps;
(b) real: ``resnetkit.train.run`` (what ``resnetkit train`` calls) with the command's defaults on a folder
    of ``--steps`` x ``--batch-size`` images (symbolic links to the files of ``--data``, taken from each
    class in turn and repeated when the folder has fewer; scaled by the model's own transforms), for 2
    epochs: the first warms up (data workers, cuDNN's algorithm search, compilation), the second is timed
    by the trainer (its clock stops when the device has finished), which also reports the share of that
    time spent waiting for data.

The ratio real / synthetic says how much of the step's speed the data pipeline delivers.

    .venv/bin/python benchmarks/train_throughput.py                      # cifar_resnet20, CPU or GPU, CIFAR-10
    .venv/bin/python benchmarks/train_throughput.py --model resnet50 --batch-size 128 --device cuda

Steps default to 30 on the CPU and 400 on CUDA: at batch 128 about one epoch of CIFAR-10's 50,000 training
images, so the epoch's start (the workers' first batches) weighs as much as in a real epoch.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from resnetkit.core.device import resolve_device
from resnetkit.core.measure import timed_calls
from resnetkit.train import TrainConfig, run
from resnetkit.train.api import new_trainer
from resnetkit.train.distributed import Dist

from train_common import RESULTS, SHARED, add_threads_option, apply_threads, machine, table


def image_folder(source: Path, count: int, target: Path) -> Path:
    """``target/<class>/`` with ``count`` symbolic links to the images of ``source``: one class after the
    other, each class's files in name order, a file linked again under another name once its class runs out."""
    classes = [(folder.name, sorted(p for p in folder.iterdir() if p.is_file()))
               for folder in sorted(p for p in source.iterdir() if p.is_dir())]
    for n in range(count):
        name, files = classes[n % len(classes)]
        turn, index = divmod(n // len(classes), len(files))
        link = target / name / f"{turn}-{files[index].name}"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(files[index].resolve())
    return target


def config(args: argparse.Namespace, data: Path, out: Path) -> TrainConfig:
    """``resnetkit train MODEL DATA --epochs 2 --batch-size B`` plus only the flags given here; no validation."""
    given = {name: getattr(args, name) for name in ("precision", "workers", "channels_last") if getattr(args, name) is not None}
    return TrainConfig(task="train", model=args.model, data_dir=str(data), out_dir=str(out), epochs=2, val_split=0.0,
                       batch_size=args.batch_size, device=args.device, compile=args.compile, **given)


def synthetic(args: argparse.Namespace, data: Path, out: Path) -> dict[str, Any]:
    """The trainer's step on random uint8 batches already on the device: warm-up, then one timed block of steps."""
    device = resolve_device(args.device)
    trainer = new_trainer(config(args, data, out), Dist(device=device), log=lambda message: None)
    size = trainer.meta.preprocessing.crop_size
    images = torch.randint(0, 256, (args.batch_size, 3, size, size), dtype=torch.uint8, device=device.torch)
    labels = torch.randint(0, len(trainer.splits.classes), (args.batch_size,), device=device.torch)
    trainer.module.train()

    def steps(count: int) -> None:
        for _ in range(count):
            trainer.step.train_batch(images, labels)

    timed_calls(lambda: steps(args.warmup), sync=device.synchronize)
    ms = timed_calls(lambda: steps(args.steps), sync=device.synchronize)[0]
    return {"hardware": trainer.hardware.to_dict(), "steps": args.steps, "ms_per_step": ms / args.steps,
            "img_per_s": args.steps * args.batch_size / (ms / 1000)}


def real(args: argparse.Namespace, data: Path, out: Path) -> dict[str, Any]:
    """``run()`` for 2 epochs; the second epoch's own timing and data-wait share."""
    summary = run(config(args, data, out), progress_bar=False)
    timed = summary["final"]
    return {"hardware": summary["hardware"], "images": timed["images"], "seconds": timed["seconds"],
            "img_per_s": timed["images_per_s"], "data_wait": timed["data_wait"]}


def main(args: argparse.Namespace) -> dict[str, Any]:
    apply_threads(args.threads)
    cuda = resolve_device(args.device).is_cuda
    args.steps = args.steps or (400 if cuda else 30)
    args.warmup = args.warmup or (20 if cuda else 3)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="train_throughput_") as work:
        data = image_folder(Path(args.data), args.steps * args.batch_size, Path(work) / "data")
        fake = synthetic(args, data, Path(work) / "synthetic")
        gc.collect()
        torch.cuda.empty_cache()
        measured = real(args, data, Path(work) / "real")
    hardware = measured["hardware"]
    ratio = measured["img_per_s"] / fake["img_per_s"]
    rows = [{"path": "synthetic: trainer step, batch on the device", "img_per_s": fake["img_per_s"], "data_wait": None,
             "ratio": 1.0},
            {"path": f"real: train on {args.data} ({hardware['workers']} workers)", "img_per_s": measured["img_per_s"],
             "data_wait": measured["data_wait"], "ratio": ratio}]
    print(f"{args.model}, batch {args.batch_size}, {hardware['device']} ({hardware['device_name']}), "
          f"{hardware['precision']}, channels_last {hardware['channels_last']}, compile {hardware['compile']}, "
          f"{args.steps} steps each after warm-up")
    print(table(rows, ["path", "img_per_s", "data_wait", "ratio"]))
    result = {"machine": machine(), "device": resolve_device(args.device).describe(), "model": args.model,
              "batch_size": args.batch_size, "steps": args.steps, "warmup_steps": args.warmup, "data": args.data,
              "synthetic": fake, "real": measured, "ratio": ratio,
              "load_avg_1min_before": load_before, "load_avg_1min_after": os.getloadavg()[0]}
    path = Path(args.output) if args.output else RESULTS / "train_throughput.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {path}")
    return result


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cifar_resnet20", help="zoo architecture, trained from random weights")
    parser.add_argument("--data", default=str(SHARED / "data" / "cifar10" / "train"), help="class-per-folder images")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, help="timed steps of each path, the real path's epoch (default: 30 on "
                        "the CPU, 400 on CUDA)")
    parser.add_argument("--warmup", type=int, help="untimed synthetic steps first (default: 3 on the CPU, 20 on CUDA)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), help="default: the trainer's for the device")
    parser.add_argument("--workers", type=int, help="default: the trainer's (usable cores minus one)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="default: the trainer's (on CUDA)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (a long first step)")
    parser.add_argument("-o", "--output", help="JSON file to write (default: results/train_throughput.json)")
    add_threads_option(parser)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse(sys.argv[1:]))
