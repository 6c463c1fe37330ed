"""Channel pruning: cost before/after for ImageNet ResNets, accuracy for CIFAR ResNets.

    .venv/bin/python benchmarks/optimize_prune.py [--amount 0.3] [--finetune-images 10000]

ImageNet ResNets (random weights; cost does not depend on values): params, MACs and
latency at batch 1 before and after, on eager and on OpenVINO (fp32 hint), timed in
interleaved rounds. CIFAR ResNets (real weights): top-1 on the full test folder before
pruning, after pruning, and after a short fine-tune on a class-balanced subset of the
train folder. Must hold: >= 25 % fewer MACs for resnet18/resnet50 at 30 %, and a measured
latency reduction. Writes results/optimize_prune.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from resnetkit import load_model
from resnetkit.core.datasets import scan_class_folders
from resnetkit.core.fileio import write_text_atomic
from resnetkit.core.measure import time_calls
from resnetkit.shrink.prune import prune
from resnetkit.backends.base import RunnerOptions

sys.path.insert(0, str(Path(__file__).resolve().parent))
from optimize_fidelity import SHARED, import_weights  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imagenet-models", default="resnet18,resnet50")
    parser.add_argument("--cifar-models", default="cifar_resnet20,cifar_resnet32")
    parser.add_argument("--amount", type=float, default=0.3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--finetune-images", type=int, default=10000, help="class-balanced subset of the train folder")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--weights-dir", default=str(SHARED / "weights" / "cifar10"))
    parser.add_argument("--test", default=str(SHARED / "data" / "cifar10" / "test"))
    parser.add_argument("--train", default=str(SHARED / "data" / "cifar10" / "train"))
    parser.add_argument("--output", default="results/optimize_prune.json")
    return parser.parse_args(argv)


def interleaved_latency(paths: dict[str, str], backend: str, rounds: int) -> dict[str, float]:
    """Median over ``rounds`` of each model's p50 latency at batch 1, models timed in turn."""
    options = RunnerOptions(precision="fp32")
    models = {label: load_model(path, backend=backend, options=options) for label, path in paths.items()}
    samples: dict[str, list[float]] = {label: [] for label in models}
    for _ in range(rounds):
        for label, model in models.items():
            batch = torch.randn(1, *model.meta.preprocessing.input_shape)
            samples[label].append(time_calls(lambda: model.logits(batch), warmup=3, min_runs=10, min_seconds=2.0).p50_ms)
    return {label: statistics.median(values) for label, values in samples.items()}


def imagenet_row(name: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from resnetkit.core.artifacts import save_artifact

    original = load_model(name, pretrained=False)
    original_path = save_artifact(tmp / f"{name}.pt", original.module, original.meta)
    report = prune(load_model(original_path, backend="eager"), "channel", tmp / f"{name}-pruned.pt", amount=args.amount)
    paths = {"before": str(original_path), "after": report.path}
    row = {"model": name, "amount": args.amount, "params_before": report.params_before, "params_after": report.params_after,
           "macs_before": report.macs_before, "macs_after": report.macs_after,
           "macs_reduction": 1 - report.macs_after / report.macs_before}
    for backend in ("eager", "openvino"):
        timing = interleaved_latency(paths, backend, args.rounds)
        row[f"{backend}_ms_before"], row[f"{backend}_ms_after"] = timing["before"], timing["after"]
        row[f"{backend}_latency_reduction"] = 1 - timing["after"] / timing["before"]
    print(f"{name:10} params {report.params_before / 1e6:.2f}M -> {report.params_after / 1e6:.2f}M, "
          f"GMACs {report.macs_before / 1e9:.3f} -> {report.macs_after / 1e9:.3f} (-{100 * row['macs_reduction']:.1f} %), "
          f"eager {row['eager_ms_before']:.1f} -> {row['eager_ms_after']:.1f} ms "
          f"(-{100 * row['eager_latency_reduction']:.1f} %), openvino {row['openvino_ms_before']:.2f} -> "
          f"{row['openvino_ms_after']:.2f} ms (-{100 * row['openvino_latency_reduction']:.1f} %)", flush=True)
    return row


def balanced_subset(train_dir: str, count: int, target: Path) -> Path:
    """A class-per-folder view of ``count`` train images (symlinks), the same number per class."""
    classes, listing = scan_class_folders(train_dir)
    per_class = count // len(classes)
    for name, files in listing:
        (target / name).mkdir(parents=True)
        for file in files[:per_class]:
            (target / name / file.name).symlink_to(file)
    return target


def cifar_row(name: str, args: argparse.Namespace, train_subset: Path, tmp: Path) -> dict[str, Any]:
    report = prune(load_model(name, backend="eager"), "channel", tmp / f"{name}-pruned.pt", amount=args.amount, eval_dir=args.test,
                   finetune_dir=str(train_subset), epochs=args.epochs)
    row = {"model": name, "amount": args.amount, "round_to": report.round_to, "params_before": report.params_before,
           "params_after": report.params_after, "macs_before": report.macs_before, "macs_after": report.macs_after,
           "top1_before": report.top1_before, "top1_pruned": report.top1_pruned,
           "top1_finetuned": report.top1_finetuned, "finetune_images": args.finetune_images, "epochs": args.epochs,
           "widths": report.widths}
    print(f"{name:15} params {report.params_before / 1e3:.0f}k -> {report.params_after / 1e3:.0f}k, "
          f"MACs -{100 * (1 - report.macs_after / report.macs_before):.1f} %, top-1 {report.top1_before:.2f} -> "
          f"{report.top1_pruned:.2f} pruned -> {report.top1_finetuned:.2f} after {args.epochs} epoch(s) on "
          f"{args.finetune_images} images", flush=True)
    return row


def main(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"amount": args.amount, "rounds": args.rounds, "imagenet": [], "cifar": [],
                              "load_average_1min_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name in filter(None, args.imagenet_models.split(",")):
            result["imagenet"].append(imagenet_row(name, args, tmp))
        cifar = list(filter(None, args.cifar_models.split(",")))
        if cifar:
            import_weights(args.weights_dir)
            subset = balanced_subset(args.train, args.finetune_images, tmp / "train-subset")
            result["cifar"] = [cifar_row(name, args, subset, tmp) for name in cifar]
    result["load_average_1min_after"] = os.getloadavg()[0]
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.output, json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(parse_args(sys.argv[1:]))
