"""Images/s of ``resnetkit predict``: the local engine vs Ray Data on one machine, interleaved.

Each round runs the same job (same images, same model, fresh output folder) once locally and once
on Ray Data, alternating which goes first, so both see the same machine load. The local Ray is
started once before the rounds (its start-up time is reported apart); a Ray run's time includes
starting the model actors, since every job pays it. The 1-minute load average is recorded before
each run: the machine may be shared.

    python benchmarks/predict_throughput.py --images 2000 --rounds 3
    python benchmarks/predict_throughput.py --model resnet50 --random-weights --data ../shared/data/hymenoptera/val \
        --stages-only    # per-core rates of the two stages, for the cluster estimate in docs/scale.md

``--stages-only`` measures, on one thread, decode + preprocess (images/s) and the forward pass at
``--batch-size`` (images/s, median of 5 timed batches after one warm-up).
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

from resnetkit.batch import predict, resolve_inputs
from resnetkit.batch.engine import ModelRequest
from resnetkit.choose.bench import environment
from resnetkit.scale.data import RayEngine
from resnetkit.scale.runtime import ray_runtime

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10" / "test"


def run_once(engine: str, request: ModelRequest, listing: Path, args: argparse.Namespace) -> dict:
    load = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory() as tmp:
        summary = predict(request, [listing], Path(tmp) / "out.parquet", workers=args.workers, progress=False,
                          engine=RayEngine(args.concurrency) if engine == "ray" else None)
    if summary.errors == summary.inputs:
        raise SystemExit(f"{engine}: none of the {summary.inputs} images could be classified: their rows say why")
    return {"engine": engine, "images": summary.written, "errors": summary.errors, "seconds": round(summary.seconds, 3),
            "images_per_s": round(summary.images_per_s, 2), "load_average_1m": load}


def stage_rates(request: ModelRequest, paths: list[str]) -> dict:
    """Per-core images/s of the two stages as ``predict`` runs them: decode + preprocess (``prepare_image``), and
    the forward pass with the runner held to one thread (the default backend, as ``predict`` picks it)."""
    import torch

    from resnetkit import load_model
    from resnetkit.backends.base import RunnerOptions
    from resnetkit.core.images import prepare_image, stack_inputs

    torch.set_num_threads(1)
    classifier = load_model(request.ref, pretrained=not request.random_weights, backend=request.backend,
                            options=RunnerOptions(batch_size=request.batch_size, threads=1))
    load = round(os.getloadavg()[0], 2)
    start = time.perf_counter()
    tensors = [prepare_image(p, classifier.meta.preprocessing) for p in paths]
    decode = len(paths) / (time.perf_counter() - start)
    batch = stack_inputs((tensors * request.batch_size)[:request.batch_size])
    classifier.probabilities(batch)  # warm-up
    times = []
    for _ in range(5):
        start = time.perf_counter()
        classifier.probabilities(batch)
        times.append(time.perf_counter() - start)
    forward = request.batch_size / statistics.median(times)
    return {"decode_preprocess_images_per_s_per_core": round(decode, 1),
            "forward_images_per_s_per_core": round(forward, 1), "images_decoded": len(paths),
            "ran": classifier.ran.label(),
            "load_average_1m": load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cifar_resnet20")
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--backend", help="as predict's --backend (default: auto, as predict)")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="folder of images (walked)")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="decode threads (per actor on Ray)")
    parser.add_argument("--concurrency", type=int, default=os.cpu_count() or 1, help="Ray model actors")
    parser.add_argument("--stages-only", action="store_true", help="per-core rates of decode and forward only")
    parser.add_argument("--json", help="output file (default: results/predict_throughput_MODEL.json)")
    args = parser.parse_args()

    # absolute: predict reads relative paths in a listing against the listing's folder
    paths = resolve_inputs([str(Path(args.data).resolve())])[:args.images]
    request = ModelRequest(args.model, random_weights=args.random_weights, backend=args.backend,
                           batch_size=args.batch_size)
    if args.stages_only:
        rates = stage_rates(request, paths)
        print(f"{args.model}, {len(paths)} images from {args.data}, one thread, batch {args.batch_size}: {rates}")
        out = Path(args.json or ROOT / "results" / f"predict_stages_{args.model}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"model": args.model, "data": args.data, **rates, "environment": environment(),
                                   "command": " ".join(sys.argv)}, indent=2) + "\n")
        return
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "inputs.txt"
        listing.write_text("\n".join(paths))
        start = time.perf_counter()
        with ray_runtime(num_cpus=os.cpu_count()):
            ray_start = time.perf_counter() - start
            for round_ in range(args.rounds):
                for engine in (("local", "ray") if round_ % 2 == 0 else ("ray", "local")):
                    runs.append({"round": round_, **run_once(engine, request, listing, args)})
                    print(f"round {round_} {engine:5s} {runs[-1]['images_per_s']:8.1f} images/s "
                          f"({runs[-1]['seconds']:.1f} s, {runs[-1]['errors']} unreadable, "
                          f"load {runs[-1]['load_average_1m']})", flush=True)
    medians = {e: statistics.median(r["images_per_s"] for r in runs if r["engine"] == e) for e in ("local", "ray")}
    print(f"\n{args.model}, {len(paths)} images from {args.data}, batch {args.batch_size}, {args.rounds} rounds "
          f"interleaved, on {os.cpu_count()} cores (see the load column)")
    print(f"{'engine':8s} {'median images/s':>16s}")
    for engine, rate in medians.items():
        print(f"{engine:8s} {rate:16.1f}")
    print(f"Ray / local: {medians['ray'] / medians['local']:.2f}; local Ray start-up (once): {ray_start:.1f} s")
    out = Path(args.json or ROOT / "results" / f"predict_throughput_{args.model}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"model": args.model, "data": args.data, "images": len(paths), "batch_size": args.batch_size,
              "workers": args.workers, "concurrency": args.concurrency, "ray_start_s": round(ray_start, 2),
              "median_images_per_s": medians, "runs": runs, "environment": environment(),
              "command": " ".join(sys.argv)}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
