"""Latency of every backend x precision side by side in one run, batch 1 by default.

    .venv/bin/python benchmarks/optimize_speed.py [--models resnet18,resnet50] [--rounds 3]

Zoo models with random weights (speed does not depend on weight values); int8 variants are
calibrated on generated images and checked to contain int8 kernels before they are timed.
Beside the default int8 path (openvino/int8: NNCF's target device ANY), one OpenVINO int8 row per
other NNCF target device (CPU, CPU_SPR) shows what that choice is worth on this CPU: CPU_SPR is
NNCF's setting for Intel CPUs with AMX.
Variants are timed in interleaved rounds (all variants once per round) so a burst of
background load hits all of them; the reported latency is the median of the round medians,
and each variant's ratio to OpenVINO's default configuration is the median over rounds of
the ratio within a round (paired, so a slow spell between rounds cancels out).
Writes results/optimize_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from resnetkit import load_model
from resnetkit.backends import onnxruntime as onnx_backend
from resnetkit.backends import openvino as openvino_backend
from resnetkit.core.samples import generated_batches
from resnetkit.core.fileio import write_text_atomic
from resnetkit.core.measure import time_calls
from resnetkit.backends.base import RunnerOptions
from resnetkit.core.zoo import get_spec

VARIANTS = [("eager", "fp32"), ("onnxruntime", "fp32"), ("openvino", None), ("openvino", "fp32"),
            ("onnxruntime", "int8"), ("openvino", "int8"), ("auto", None), ("auto", "int8")]
NNCF_TARGET_DEVICES = ("CPU", "CPU_SPR")  # ANY is the default path's, timed as openvino/int8


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,resnet50")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="minimum timed seconds per variant per round")
    parser.add_argument("--output", default="results/optimize_speed.json")
    return parser.parse_args(argv)


def int8_kernels(classifier: Any) -> dict[str, int]:
    runner = getattr(classifier.runner, "built", classifier.runner)  # zoo models: built on first use
    runner = getattr(runner, "chosen", runner)  # auto: the runner it chose
    if isinstance(runner, openvino_backend.OpenVinoRunner):
        return openvino_backend.runner_int8_layers(runner)
    if isinstance(runner, onnx_backend.OnnxRuntimeRunner):
        return onnx_backend.int8_kernels(runner.model)
    return {}


def pt2e_status() -> str:
    """Whether PT2E + X86InductorQuantizer (torchao) can quantize a torchvision ResNet here."""
    try:
        from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    except ImportError as exc:
        return f"not installed ({exc})"
    module = get_spec("resnet18").build().eval()
    example = (torch.zeros(1, 3, 224, 224),)
    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
    try:
        prepare_pt2e(torch.export.export(module, example).module(), quantizer)
    except Exception as exc:  # report whatever the library raises
        return f"fails: {type(exc).__name__}: {exc}"
    return "prepare_pt2e works"


def bench_model(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    meta = get_spec(name).meta()
    calibration = generated_batches(meta, count=32, batch_size=8)
    built = []
    for backend, precision in VARIANTS:
        options = RunnerOptions(batch_size=args.batch_size, precision=precision, calibration=calibration)
        classifier = load_model(name, pretrained=False, backend=backend, options=options)
        kernels = int8_kernels(classifier) if classifier.runner.precision == "int8" else {}
        if classifier.runner.precision == "int8" and not kernels:
            raise SystemExit(f"{name} {backend} int8: no int8 kernels in the runtime graph")
        built.append((backend, precision, classifier.runner, kernels))
    float_model = openvino_backend.converted(get_spec(name).build().eval(), meta)
    for target in NNCF_TARGET_DEVICES:
        runner = openvino_backend.OpenVinoRunner(
            openvino_backend.quantize_static(float_model, calibration, target_device=target))
        built.append(("openvino", f"int8 (NNCF {target})", runner, openvino_backend.runner_int8_layers(runner)))
    batch = torch.randn(args.batch_size, *meta.preprocessing.input_shape)
    rounds: dict[int, list[float]] = {i: [] for i in range(len(built))}
    for _ in range(args.rounds):
        for i, (_, _, runner, _) in enumerate(built):
            timing = time_calls(lambda r=runner: r(batch), warmup=3, min_runs=10, min_seconds=args.seconds)
            rounds[i].append(timing.p50_ms)
    rows = []
    for i, (backend, precision, runner, kernels) in enumerate(built):
        rows.append({"model": name, "backend_requested": backend, "precision_requested": precision or "default",
                     "backend": runner.backend, "precision": runner.precision,
                     "latency_ms": statistics.median(rounds[i]), "round_p50s_ms": rounds[i],
                     "batch_size": args.batch_size, "int8_kernels": kernels})
    eager = rows[0]["latency_ms"]
    openvino_default = next(r for r in rows if (r["backend_requested"], r["precision_requested"]) == ("openvino", "default"))
    for row in rows:
        row["speedup_vs_eager_fp32"] = eager / row["latency_ms"]
        # paired: each round's ratio to OpenVINO's default in that same round, so drift between rounds cancels
        ratios = [mine / theirs for mine, theirs in zip(row["round_p50s_ms"], openvino_default["round_p50s_ms"])]
        row["vs_openvino_default_per_round"] = ratios
        row["vs_openvino_default"] = statistics.median(ratios)
    return rows


def main(args: argparse.Namespace) -> dict[str, Any]:
    load_before = os.getloadavg()
    rows = [row for name in args.models.split(",") for row in bench_model(name, args)]
    result = {"threads": torch.get_num_threads(), "rounds": args.rounds,
              "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]}, "pt2e_x86_inductor": pt2e_status(),
              "openvino_default_precision": openvino_backend.default_precision(), "rows": rows}
    print(f"{'model':10} {'requested':30} {'ran as':26} {'latency ms':>10} {'vs eager':>9} {'vs OpenVINO default':>26}"
          "  int8 kernels")
    for r in rows:
        requested = f"{r['backend_requested']}/{r['precision_requested']}"
        ran = f"{r['backend']}/{r['precision']}"
        kernels = sum(r["int8_kernels"].values())
        per_round = r["vs_openvino_default_per_round"]
        versus = f"{r['vs_openvino_default']:.3f}x ({min(per_round):.2f}-{max(per_round):.2f})"
        print(f"{r['model']:10} {requested:30} {ran:26} {r['latency_ms']:10.2f} {r['speedup_vs_eager_fp32']:8.2f}x "
              f"{versus:>26}  {kernels or '-'}")
    print("latency: median of the round medians; vs OpenVINO default: median (range) over rounds of the ratio to "
          "OpenVINO's default configuration timed in the same round")
    print(f"PT2E X86InductorQuantizer: {result['pt2e_x86_inductor']}")
    print(f"load average (1 min) before/after: {load_before[0]:.1f} / {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.output, json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(parse_args(sys.argv[1:]))
