"""Where does a faiss HNSW index beat exact NumPy cosine search for ``resnetkit similar``?

For each number of stored embeddings N and of query images Q: the time of the search step of
``similar`` (k=5) done exactly (normalize + one matrix product) and through the cached HNSW index
(read the cache file + search), both through ``CosineIndex`` as the command runs it; interleaved,
median of the runs. Also the one-time index build and HNSW's recall@5 against exact search. Vectors are
synthetic and clustered (200 Gaussian clusters, 512 floats like resnet18's pooled features): the
timings depend on N and the width only; recall on real embeddings may differ.

    python benchmarks/similar_search.py [--sizes 10000 30000 100000] [--queries 8 64 512] [--runs 3]

Writes results/similar_search.json (rows and the load average before and after).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from resnetkit.core.fileio import write_text_atomic
from resnetkit.features.search import CosineIndex

DIM, K = 512, 5


def clustered(n: int, rng: np.random.Generator) -> np.ndarray:
    centres = rng.normal(size=(200, DIM)).astype(np.float32)
    return centres[rng.integers(0, 200, n)] + 0.5 * rng.normal(size=(n, DIM)).astype(np.float32)


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def measure(vectors: np.ndarray, n_queries: int, runs: int, marker: Path, rng: np.random.Generator) -> dict:
    picks = rng.integers(0, len(vectors), n_queries)
    queries = vectors[picks] + 0.1 * rng.normal(size=(n_queries, DIM)).astype(np.float32)
    exact_times, hnsw_times = [], []
    for _ in range(runs):  # interleaved
        t, (_, exact, _) = timed(lambda: CosineIndex(vectors, None, "exact").search(queries, K))
        exact_times.append(t)
        t, (_, approx, _) = timed(lambda: CosineIndex(vectors, marker, "hnsw").search(queries, K))
        hnsw_times.append(t)
    recall = float(np.mean([len(set(a) & set(e)) / K for a, e in zip(approx, exact)]))
    return {"n": len(vectors), "queries": n_queries, "comparisons": len(vectors) * n_queries,
            "exact_ms": 1000 * statistics.median(exact_times), "hnsw_ms": 1000 * statistics.median(hnsw_times),
            "hnsw_recall_at_5": recall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 30000, 100000])
    parser.add_argument("--queries", type=int, nargs="+", default=[8, 64, 512])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--output", default="results/similar_search.json")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        rows = []
        for n in args.sizes:
            rng = np.random.default_rng(n)
            vectors = clustered(n, rng)
            marker = Path(folder) / f"emb{n}.parquet"
            marker.write_bytes(b"")  # stands for the embedding file: the index cache is keyed on its name and time
            build_s, _ = timed(lambda: CosineIndex(vectors, marker, "hnsw").search(vectors[:1], K))
            print(f"N={n:>7}: HNSW index built and cached in {build_s:.1f} s", flush=True)
            for q in args.queries:
                rows.append({**measure(vectors, q, args.runs, marker, rng), "hnsw_build_s": build_s})
                r = rows[-1]
                print(f"N={n:>7} Q={q:>4} (N*Q {r['comparisons']:.1e})  exact {r['exact_ms']:8.1f} ms  "
                      f"hnsw {r['hnsw_ms']:8.1f} ms  recall@5 {r['hnsw_recall_at_5']:.3f}", flush=True)
    load_after = os.getloadavg()
    note = (f"k={K}, dim {DIM}, median of {args.runs} interleaved runs; "
            f"{os.cpu_count()} CPUs, 1-minute load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print(note)
    write_text_atomic(args.output, json.dumps({"rows": rows, "note": note, "load_average": [load_before, load_after]},
                                              indent=2))
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
