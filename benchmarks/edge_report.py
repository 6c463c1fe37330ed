"""Edge exports side by side: size, latency here and agreement with the source, per model, format and precision.

    .venv-edge/bin/python benchmarks/edge_report.py [--models resnet18,resnet34,mobilenet_v2,cifar_resnet20] [--out FILE]

Each model is exported with 'resnetkit export' (the library call) to ONNX fp32/fp16, LiteRT fp32/fp16/int8,
ExecuTorch fp32/int8 and Core ML fp16; every file that runs here is loaded back with its own runtime and compared
with the source (eager PyTorch, fp32) on real images: top-1 agreement, and for the CIFAR ResNet (real weights) the
top-1 on the CIFAR-10 test folder. int8 is calibrated on images of the training folder. Latencies: batch 1, median
of calls of every variant and eager interleaved in rounds (core.measure.time_interleaved, 3 warm-up calls each,
at least 10 calls and 2 s per measurement). ImageNet models have random weights (none can be downloaded here):
their agreement is that of near-tied logits, a stricter test than trained weights give. Prints a Markdown table
per model and writes the JSON (default results/edge_report.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from resnetkit import load_model
from resnetkit.backends.base import RunnerOptions
from resnetkit.core import weights
from resnetkit.core.device import CPU, cpu_name, usable_cores
from resnetkit.core.fileio import write_text_atomic
from resnetkit.core.zoo import get_spec
from resnetkit.shrink.compare import compare_latency, top1_accuracy
from resnetkit.shrink.export import export_model

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CIFAR_CHECKPOINT = {"cifar_resnet20": "resnet20-12fca82f.th", "cifar_resnet32": "resnet32-d509ac18.th"}
VARIANTS = [("onnx", ".onnx", "fp32"), ("onnx", ".onnx", "fp16"), ("litert", ".tflite", "fp32"),
            ("litert", ".tflite", "fp16"), ("litert", ".tflite", "int8"), ("executorch", ".pte", "fp32"),
            ("executorch", ".pte", "int8"), ("coreml", ".mlpackage", "fp16")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,resnet34,mobilenet_v2,cifar_resnet20")
    parser.add_argument("--variants", default=",".join(f"{f}:{p}" for f, _, p in VARIANTS),
                        help="comma-separated FORMAT:PRECISION (default: all)")
    parser.add_argument("--calib-size", type=int, default=300)
    parser.add_argument("--check-images", type=int, default=1000, help="agreement images (hymenoptera val has 153)")
    parser.add_argument("--eval-limit", type=int, default=None, help="CIFAR test images for top-1 (default: all 10,000)")
    parser.add_argument("--out", default=str(ROOT / "results" / "edge_report.json"))
    return parser.parse_args(argv)


def data_for(model: str) -> dict[str, Path | None]:
    """Agreement images, calibration images and (CIFAR only) the labelled test folder."""
    if model.startswith("cifar_"):
        cifar = SHARED / "data" / "cifar10"
        return {"check": cifar / "test", "calib": cifar / "train", "eval": cifar / "test"}
    bees = SHARED / "data" / "hymenoptera"
    return {"check": bees / "val", "calib": bees / "train", "eval": None}


def source_model(model: str) -> Any:
    if model in CIFAR_CHECKPOINT:
        spec = get_spec(model)
        if not weights.cached_path(spec.default_weights).is_file():
            weights.import_file(model, spec.default_weights, SHARED / "weights" / "cifar10" / CIFAR_CHECKPOINT[model])
    return load_model(model, pretrained=model in CIFAR_CHECKPOINT, backend="eager",
                      options=RunnerOptions(precision="fp32", device=CPU))


def measure_model(model: str, variants: list[tuple[str, str, str]], args: argparse.Namespace,
                  folder: Path) -> dict[str, Any]:
    source, data = source_model(model), data_for(model)
    rows, runnable = [], {"eager fp32": source}
    for fmt, suffix, precision in variants:
        path = folder / f"{model}_{fmt}_{precision}{suffix}"
        print(f"{model}: {fmt} {precision}", file=sys.stderr, flush=True)
        try:
            report = export_model(source, fmt, path, precision=precision, check_dir=data["check"],
                                  check_images=args.check_images, calib_dir=data["calib"] if precision == "int8" else None,
                                  calib_size=args.calib_size)
        except Exception as exc:  # noqa: BLE001 - one failed conversion is a row of the report, not the end of it
            rows.append({"format": fmt, "precision": precision, "error": f"{type(exc).__name__}: {exc}"[:300]})
            continue
        row = {"format": fmt, "precision": precision, "size_bytes": report.size_bytes,
               "agreement": report.agreement.to_dict() if report.agreement else None, "notes": report.notes,
               "runtime": f"{report.backend}/{report.precision}"}
        if report.agreement is not None:
            runnable[f"{fmt} {precision}"] = load_model(path)
        rows.append(row)
    timings = compare_latency(runnable).timings
    accuracy = {name: top1_accuracy(c, data["eval"], args.eval_limit) for name, c in runnable.items()} if data["eval"] else {}
    for row in rows:
        name = f"{row['format']} {row['precision']}"
        row["latency_p50_ms"] = timings[name].p50_ms if name in timings else None
        row["top1"] = accuracy.get(name)
    return {"model": model, "weights": source.meta.weights, "eager_size_bytes": sum(
        p.numel() * 4 for p in source.module.parameters()), "eager_latency_p50_ms": timings["eager fp32"].p50_ms,
            "eager_top1": accuracy.get("eager fp32"), "variants": rows}


def table(result: dict[str, Any]) -> str:
    """One Markdown table of a model's variants."""
    lines = [f"**{result['model']}** ({result['weights']} weights; eager fp32: {result['eager_size_bytes'] / 1e6:.1f} MB "
             f"of parameters, {result['eager_latency_p50_ms']:.2f} ms"
             + (f", top-1 {result['eager_top1']:.2f} %" if result["eager_top1"] is not None else "") + ")", "",
             "| format | precision | size (MB) | latency p50 (ms) | top-1 agreement | max abs logit diff | top-1 (change) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in result["variants"]:
        if "error" in row:
            lines.append(f"| {row['format']} | {row['precision']} | failed: {row['error']} | | | | |")
            continue
        agreement = row["agreement"]
        agree = (f"{agreement['top1_agreement']:.2f} % of {agreement['n_inputs']}" if agreement
                 else "not run (needs macOS)")
        diff = f"{agreement['max_abs_diff']:.3g}" if agreement else "-"
        latency = f"{row['latency_p50_ms']:.2f}" if row["latency_p50_ms"] is not None else "-"
        top1 = (f"{row['top1']:.2f} ({row['top1'] - result['eager_top1']:+.2f})" if row["top1"] is not None else "-")
        lines.append(f"| {row['format']} | {row['precision']} | {row['size_bytes'] / 1e6:.2f} | {latency} | {agree} | "
                     f"{diff} | {top1} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    wanted = set(args.variants.split(","))
    variants = [v for v in VARIANTS if f"{v[0]}:{v[2]}" in wanted]
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure_model(m, variants, args, Path(tmp)) for m in args.models.split(",")]
    report = {"machine": {"cpu": cpu_name(), "cores": usable_cores(), "system": platform.system(),
                          "torch": torch.__version__, "load_average": os.getloadavg()},
              "latency": "batch 1, p50 of interleaved calls (3 warm-up each, >= 10 calls, >= 2 s per measurement)",
              "models": results}
    for result in results:
        print(table(result) + "\n")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(report, indent=2))
    print(f"measured on {report['machine']['cpu']} ({report['machine']['cores']} cores); wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
