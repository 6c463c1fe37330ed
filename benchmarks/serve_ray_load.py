"""Closed-loop load on `resnetkit serve` and `resnetkit serve --ray`, interleaved, in one run.

Both servers are started once (same model, same batching settings) and stay up; then runs of
``--clients`` concurrent clients alternate between them for ``--rounds`` rounds, so both see the
same machine load. The load generator, servers' start/stop and the report rows are those of
``serve_load.py``. ``--replicas`` model replicas on Ray (each built as serve builds its model without
``--threads``/``--workers``) against one plain server. Loopback only; bounded in time and request count.

    python benchmarks/serve_ray_load.py --model cifar_resnet20 --clients 16 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import tempfile
from pathlib import Path

from resnetkit.choose.bench import environment
from serve_load import ROOT, Server, _row, closed_loop, model_ref, multipart_request, sample_images, start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cifar_resnet20")
    parser.add_argument("--real-weights", action="store_true", help="zoo weights instead of random ones")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-requests", type=int, default=20000)
    parser.add_argument("--json", help="output file (default: results/serve_ray_load_MODEL.json)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        ref = model_ref(args.model, args.real_weights, workdir)
        common = [sys.executable, "-m", "resnetkit", "serve", f"{args.model}={ref}", "--no-access-log",
                  "--max-batch-size", str(args.max_batch_size)]
        servers = [Server("resnetkit serve", common, "/readyz", f"/v1/models/{args.model}/classify"),
                   Server(f"serve --ray x{args.replicas}", common + ["--ray", "--replicas", str(args.replicas)],
                          "/readyz", f"/v1/models/{args.model}/classify")]
        images = sample_images(args.model, None)
        processes = []
        try:
            for server in servers:
                processes.append(start(server, workdir / f"{server.port}.log"))
            requests = {s.name: [multipart_request(s.classify_path, s.port, i) for i in images] for s in servers}
            for server in servers:
                asyncio.run(closed_loop(server.name, server.port, requests[server.name], args.clients, args.warmup,
                                        args.max_requests))
            runs = []
            for round_ in range(args.rounds):
                for server in (servers if round_ % 2 == 0 else servers[::-1]):
                    run = asyncio.run(closed_loop(server.name, server.port, requests[server.name], args.clients,
                                                  args.seconds, args.max_requests))
                    print(_row(run.summary()), flush=True)
                    runs.append(run.summary())
        finally:
            for process in processes:  # SIGTERM; a Ray server needs longer than serve_load's 30 s to stop
                process.send_signal(signal.SIGTERM)
                process.wait(300)
    medians = {s.name: statistics.median(r["throughput_rps"] for r in runs if r["server"] == s.name) for s in servers}
    print("median req/s: " + ", ".join(f"{name} {rate:.1f}" for name, rate in medians.items()))
    out = Path(args.json or ROOT / "results" / f"serve_ray_load_{args.model}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "clients": args.clients, "replicas": args.replicas,
                               "median_rps": medians, "runs": runs, "environment": environment(),
                               "command": " ".join(sys.argv)}, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
