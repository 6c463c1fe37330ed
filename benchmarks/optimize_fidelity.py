"""Accuracy of quantized CIFAR ResNets on the full CIFAR-10 test folder (real weights).

    .venv/bin/python benchmarks/optimize_fidelity.py [--weights-dir ../shared/weights/cifar10]

For each model: fp32 eager top-1, then each quantization (fp16/bf16 on eager and OpenVINO,
static int8 on OpenVINO/NNCF and ONNX Runtime QDQ with 300 calibration images from the
train folder) evaluated on all test images, with the change in points. Must hold: int8
loses at most 0.5 points, fp16/bf16 at most 0.2. Writes results/optimize_fidelity.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from resnetkit import load_model

from resnetkit.core import weights
from resnetkit.shrink.compare import top1_accuracy
from resnetkit.core.fileio import write_text_atomic
from resnetkit.backends.base import RunnerOptions
from resnetkit.shrink.quantize import quantize
from resnetkit.core.zoo import get_spec

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CHECKPOINTS = {"cifar_resnet20": "resnet20-12fca82f.th", "cifar_resnet32": "resnet32-d509ac18.th"}
# (method, backend, calibration, allowed loss in points)
# fp16 on eager is left out by default: CPUs without fp16 arithmetic (the development VMs) make PyTorch
# emulate it, slower than fp32 (not timed here).
VARIANTS = [("bf16", "eager", None, 0.2), ("fp16", "openvino", None, 0.2), ("bf16", "openvino", None, 0.2),
            ("static-int8", "openvino", "histogram", 0.5), ("static-int8", "onnxruntime", "percentile", 0.5),
            ("dynamic-int8", "onnxruntime", None, 0.5)]
SUFFIX = {"eager": ".pt", "openvino": ".xml", "onnxruntime": ".onnx"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(CHECKPOINTS))
    parser.add_argument("--weights-dir", default=str(SHARED / "weights" / "cifar10"))
    parser.add_argument("--test", default=str(SHARED / "data" / "cifar10" / "test"))
    parser.add_argument("--calib", default=str(SHARED / "data" / "cifar10" / "train"))
    parser.add_argument("--calib-size", type=int, default=300)
    parser.add_argument("--methods", default=",".join(dict.fromkeys(v[0] for v in VARIANTS)),
                        help="comma-separated subset of the methods (default: all)")
    parser.add_argument("--output", default="results/optimize_fidelity.json")
    return parser.parse_args(argv)


def import_weights(weights_dir: str) -> None:
    """Place the CIFAR checkpoints in the weights cache (verified against their hashes)."""
    for model, file in CHECKPOINTS.items():
        spec = get_spec(model).default_weights
        if not weights.cached_path(spec).is_file():
            weights.import_file(model, spec, Path(weights_dir) / file)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """fp32 is evaluated once per model; each variant is quantized, reloaded and evaluated."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            source = load_model(model, backend="eager", options=RunnerOptions(precision="fp32"))
            fp32_top1 = top1_accuracy(source, args.test)
            print(f"{model:15} fp32 eager top-1 {fp32_top1:.2f} %", flush=True)
            for method, backend, calibration, allowed in VARIANTS:
                if method not in args.methods.split(","):
                    continue
                out = Path(tmp) / f"{model}-{method}-{backend}-{calibration}{SUFFIX[backend]}"
                report = quantize(source, method, out, backend=backend, calib_dir=args.calib if calibration else None,
                                  calib_size=args.calib_size, calibration_method=calibration)
                top1 = top1_accuracy(load_model(report.path), args.test)
                loss = fp32_top1 - top1
                rows.append({"model": model, "method": method, "backend": backend, "calibration": calibration,
                             "ran_at": report.precision, "fp32_top1": fp32_top1, "top1": top1,
                             "loss_points": loss, "allowed_loss": allowed, "holds": loss <= allowed,
                             "top1_agreement": report.agreement.top1_agreement, "size_bytes": report.size_bytes,
                             "fp32_size_bytes": report.fp32_size_bytes, "int8_kernels": report.int8_kernels})
                print(f"{model:15} {method:12} {backend:11} {calibration or '-':10} ran {report.precision:5} "
                      f"top-1 {fp32_top1:6.2f} -> {top1:6.2f} ({-loss:+.2f}, allowed -{allowed}) "
                      f"agree {report.agreement.top1_agreement:6.2f} %  {'ok' if loss <= allowed else 'FAILS'}",
                      flush=True)
    return rows


def main(args: argparse.Namespace) -> dict[str, Any]:
    import_weights(args.weights_dir)
    result = {"test": args.test, "calib": f"{args.calib_size} images of {args.calib}", "rows": run(args)}
    write_json(args.output, result)
    return result


def write_json(output: str, result: dict[str, Any]) -> None:
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output, json.dumps(result, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("RESNETKIT_OFFLINE", "1")
    main(parse_args(sys.argv[1:]))
