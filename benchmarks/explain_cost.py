"""Seconds of ``resnetkit explain`` per image, for top-1 and top-k heatmaps, with the model already loaded.

The ``explain`` function runs one forward pass to rank the classes, then one forward and backward pass
over a batch of k copies of the image; the top-k variants are timed in interleaved rounds after one
warm-up call, and the median is reported.

    .venv/bin/python benchmarks/explain_cost.py [--model resnet50] [--image PATH] [--top-k 1 3] [--runs 3]

Writes results/explain_cost.json (with the 1-minute load average before and after).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from resnetkit import load_model
from resnetkit.core.fileio import write_text_atomic
from resnetkit.explain.run import explain

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = ROOT.parent / "shared" / "data" / "hymenoptera" / "val" / "bees" / "1032546534_06907fe3b3.jpg"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50", help="zoo name (random weights: the cost does not depend on them)")
    parser.add_argument("--image", default=str(DEFAULT_IMAGE), help="default: a 366x500 hymenoptera photo in ../shared")
    parser.add_argument("--top-k", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--output", default=str(ROOT / "results" / "explain_cost.json"))
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    classifier = load_model(args.model, pretrained=False, backend="eager")
    with tempfile.TemporaryDirectory() as out:
        explain(classifier, [args.image], out, top_k=args.top_k[0], progress=False)  # warm-up
        seconds: dict[int, list[float]] = {k: [] for k in args.top_k}
        for _ in range(args.runs):
            for k in args.top_k:
                start = time.perf_counter()
                explain(classifier, [args.image], out, top_k=k, progress=False)
                seconds[k].append(time.perf_counter() - start)
    load_after = os.getloadavg()[0]
    for k, runs in seconds.items():
        print(f"{args.model} top-{k}: {statistics.median(runs):.2f} s per image (runs: "
              f"{', '.join(f'{s:.2f}' for s in runs)})")
    print(f"median of {args.runs} interleaved runs after a warm-up; {os.cpu_count()} CPUs, 1-minute load average "
          f"{load_before:.1f} before, {load_after:.1f} after")
    result = {"model": args.model, "image": args.image, "seconds": {str(k): v for k, v in seconds.items()},
              "median_s": {str(k): statistics.median(v) for k, v in seconds.items()},
              "load_average_1min": {"before": load_before, "after": load_after}}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.output, json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
