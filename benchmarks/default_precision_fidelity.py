"""Fidelity of the default precision (what ``auto`` runs when no precision is asked for) against exact fp32.

    .venv/bin/python benchmarks/default_precision_fidelity.py [--models cifar_resnet20,cifar_resnet32]

Runs the real CIFAR-10 weights over the full CIFAR-10 test set (../shared, 10,000 images)
on OpenVINO twice, once in exact fp32 and once in the default precision on this CPU (bf16
where the CPU computes bf16 natively), and reports top-1 of both, the top-1 agreement and
the largest logit difference. Writes results/default_precision_fidelity.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from resnetkit import load_model
from resnetkit.backends.base import RunnerOptions
from resnetkit.backends.openvino import default_precision
from resnetkit.core.datasets import DecodeAndTransform, ImageFileDataset, collate_skipping_bad, labelled_samples
from resnetkit.core.fileio import write_text_atomic

from optimize_fidelity import SHARED, import_weights  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cifar_resnet20,cifar_resnet32")
    parser.add_argument("--test", default=str(SHARED / "data" / "cifar10" / "test"))
    parser.add_argument("--weights-dir", default=str(SHARED / "weights" / "cifar10"))
    parser.add_argument("--output", default="results/default_precision_fidelity.json")
    return parser.parse_args(argv)


def compare(model: str, test_dir: str) -> dict[str, Any]:
    """Logits of exact fp32 and of the default precision on every test image, decoded once."""
    fp32 = load_model(model, backend="openvino", options=RunnerOptions(batch_size=100, precision="fp32"))
    default = load_model(model, backend="openvino", options=RunnerOptions(batch_size=100))
    _, samples = labelled_samples(test_dir, fp32.meta.categories)
    data = ImageFileDataset(samples, DecodeAndTransform(fp32.transform))
    loader = torch.utils.data.DataLoader(data, batch_size=100, num_workers=2, collate_fn=collate_skipping_bad)
    correct = {"fp32": 0, "default": 0}
    agree, total, max_diff = 0, 0, 0.0
    for batch in loader:
        images, labels = batch.images, batch.labels
        a, b = fp32.logits(images), default.logits(images)
        correct["fp32"] += int((a.argmax(1) == labels).sum())
        correct["default"] += int((b.argmax(1) == labels).sum())
        agree += int((a.argmax(1) == b.argmax(1)).sum())
        max_diff = max(max_diff, float((a - b).abs().max()))
        total += len(labels)
    return {"model": model, "images": total, "default_precision": default.runner.precision,
            "fp32_top1": 100 * correct["fp32"] / total, "default_top1": 100 * correct["default"] / total,
            "top1_agreement": 100 * agree / total, "max_abs_logit_diff": max_diff}


def main(args: argparse.Namespace) -> dict[str, Any]:
    import_weights(args.weights_dir)
    load_before = os.getloadavg()[0]
    rows = [compare(model, args.test) for model in args.models.split(",")]
    result = {"openvino_default_precision": default_precision(), "rows": rows,
              "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]}}
    for r in rows:
        print(f"{r['model']:15} {r['images']} images: fp32 top-1 {r['fp32_top1']:.2f} %, {r['default_precision']} "
              f"top-1 {r['default_top1']:.2f} % ({r['default_top1'] - r['fp32_top1']:+.2f}), agreement "
              f"{r['top1_agreement']:.2f} %, max |logit diff| {r['max_abs_logit_diff']:.3g}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.output, json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(parse_args(sys.argv[1:]))
