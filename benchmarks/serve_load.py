"""Closed-loop load on `resnetkit serve` and on the naive Flask baseline, in one run.

N concurrent clients each send one image (multipart field ``file``), wait for the answer and
send the next, for T seconds (loopback only; bounded in time and request count). Every server
is started first; the runs are interleaved (for each client count, each server in turn), so a
change in background load hits all of them alike. For each server and client count:
throughput, p50/p90/p99 latency, errors, and for resnetkit serve the mean batch size it
formed. The Flask baseline runs once per ``--flask-backends`` entry: ``eager`` is the classic
PyTorch Flask demo users write today; ``auto`` is the same demo on resnetkit's default runtime,
which isolates the serving strategy. Then the ratios, and resnetkit serve's best
throughput as a fraction of two offline rates of the same model, backend and batch size,
measured in the same run (before and after the load; the higher is kept): forward passes only
(batch / p50 time, as ``resnetkit bench``), and serial end to end: decode + preprocess the same
images (``prepare_image``) plus the forward pass, one after the other, per image. The serial rate
is a ceiling for one instance on every core; several instances overlap decoding with forward
passes and can pass it.

Weights are random by default (costs do not depend on weight values; no download needed).
The load generator runs on the same machine and takes CPU from the servers; both servers
pay that cost alike.

    python benchmarks/serve_load.py --model resnet18 --backend openvino --clients 1,16 --seconds 20
    python benchmarks/serve_load.py --model cifar_resnet20 --clients 1,32,64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import httpx
import torch
from prometheus_client.parser import text_string_to_metric_families

from resnetkit.backends.base import RunnerOptions
from resnetkit.core.artifacts import save_artifact
from resnetkit.core.images import prepare_image
from resnetkit.choose.bench import environment
from resnetkit.core.samples import synthetic_jpeg
from resnetkit.core.measure import percentile, time_calls
from resnetkit.run.loading import load_model
from resnetkit.core.zoo import get_spec

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
HOST = "127.0.0.1"
MAX_SECONDS = 300
BOUNDARY = "resnetkit-load-boundary"


@dataclass
class Run:
    """One closed-loop run against one server."""

    server: str
    clients: int
    seconds: float
    requests: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    mean_batch: float | None = None
    load_average: float = field(default_factory=lambda: round(os.getloadavg()[0], 2))  # other jobs on the machine

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies_ms) or [float("nan")]
        return {"server": self.server, "clients": self.clients, "seconds": round(self.seconds, 2),
                "requests": self.requests, "errors": self.errors, "throughput_rps": round(self.throughput, 1),
                "p50_ms": round(statistics.median(ordered), 2), "p90_ms": round(percentile(ordered, 90), 2),
                "p99_ms": round(percentile(ordered, 99), 2), "mean_batch": self.mean_batch,
                "load_average_1min": self.load_average}


# --- the load generator: raw HTTP/1.1 keep-alive connections, light enough to leave CPU to the servers ---

def multipart_request(path: str, port: int, image: bytes) -> bytes:
    body = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="image.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n").encode() + image + f"\r\n--{BOUNDARY}--\r\n".encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Length: {len(body)}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n")
    return head.encode() + body


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bool]:
    """Send one request, read the whole response; (status, connection still usable)."""
    writer.write(request)
    await writer.drain()
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    length = re.search(r"(?im)^content-length:\s*(\d+)", head)
    await reader.readexactly(int(length.group(1)) if length else 0)
    keep_alive = head.startswith("HTTP/1.1") and not re.search(r"(?im)^connection:\s*close", head)
    return int(head.split(" ", 2)[1]), keep_alive


async def client(port: int, requests: list[bytes], offset: int, stop_at: float, budget: list[int], run: Run) -> None:
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    index = offset
    while time.perf_counter() < stop_at and budget[0] > 0:
        budget[0] -= 1
        start = time.perf_counter()
        try:
            connection = connection or await asyncio.open_connection(HOST, port)
            status, keep_alive = await exchange(*connection, requests[index % len(requests)])
        except (OSError, asyncio.IncompleteReadError, ValueError):
            status, keep_alive = 0, False
        if status == 200:
            run.requests += 1
            run.latencies_ms.append((time.perf_counter() - start) * 1000.0)
        else:
            run.errors += 1
        if not keep_alive and connection:
            connection[1].close()
            connection = None
        index += 1
    if connection:
        connection[1].close()


async def closed_loop(name: str, port: int, requests: list[bytes], clients: int, seconds: float,
                      max_requests: int) -> Run:
    run = Run(name, clients, seconds)
    start = time.perf_counter()
    budget = [max_requests]
    await asyncio.gather(*(client(port, requests, i, start + seconds, budget, run) for i in range(clients)))
    run.seconds = time.perf_counter() - start
    return run


# --- servers ---------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    name: str
    command: list[str]
    ready_path: str
    classify_path: str
    port: int = field(default_factory=free_port)

    def url(self, path: str = "") -> str:
        return f"http://{HOST}:{self.port}{path}"


def start(server: Server, log: Path) -> subprocess.Popen:
    process = subprocess.Popen(server.command + ["--port", str(server.port)], stdout=log.open("w"),
                               stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not _answers(server.url(server.ready_path)):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit(f"{server.name} did not start; its log:\n{log.read_text()}")
        time.sleep(0.2)
    return process


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()


def cpu_split(server: Server) -> dict[str, float]:
    """The inference threads, instances per model and decode workers resnetkit serve chose, from its /metrics."""
    return {sample.labels["role"]: sample.value
            for family in text_string_to_metric_families(httpx.get(server.url("/metrics")).text)
            for sample in family.samples if sample.name == "resnetkit_cpu_split"}


def batch_totals(server: Server) -> tuple[float, float]:
    """(images, batches) formed so far by resnetkit serve, from its /metrics."""
    totals = {"resnetkit_batch_size_sum": 0.0, "resnetkit_batch_size_count": 0.0}
    for family in text_string_to_metric_families(httpx.get(server.url("/metrics")).text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    return totals["resnetkit_batch_size_sum"], totals["resnetkit_batch_size_count"]


# --- inputs ----------------------------------------------------------------------------------------------

def model_ref(model: str, real_weights: bool, workdir: Path) -> str:
    """The zoo name (real weights), or an artifact of the architecture with random weights."""
    if real_weights:
        return model
    spec = get_spec(model)
    return str(save_artifact(workdir / f"{model}-random.pt", spec.build().eval(), spec.meta().replace(weights="random")))


def sample_images(model: str, folder: str | None, count: int = 64) -> list[bytes]:
    """Real JPEGs of the right kind from ../shared (CIFAR test images for 32 px models, photos otherwise),
    or synthetic 640x480 photos when ../shared is absent."""
    small = get_spec(model).default_weights.preprocessing.crop_size <= 64
    default = SHARED_DATA / ("cifar10/test" if small else "hymenoptera/val")
    root = Path(folder) if folder else default
    paths = sorted(root.rglob("*.jpg")) if root.is_dir() else []
    if paths:
        return [p.read_bytes() for p in paths[:: max(1, len(paths) // count)][:count]]
    return [synthetic_jpeg(seed=i) for i in range(8)]


# --- the run ---------------------------------------------------------------------------------------------

SERVE = "resnetkit serve"


def servers(model: str, ref: str, args: argparse.Namespace) -> Iterator[Server]:
    threads = ["--threads", str(args.threads)] if args.threads else []
    backend = ["--backend", args.backend] if args.backend else []
    for variant in ["", *args.serve_variants]:
        yield Server(f"{SERVE} {variant}".strip(),
                     [sys.executable, "-m", "resnetkit", "serve", f"{model}={ref}", "--no-access-log", "--max-batch-size",
                      str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms), *threads, *backend,
                      *variant.split()], "/readyz", f"/v1/models/{model}/classify")
    for flask_backend in args.flask_backends:
        yield Server(f"flask ({flask_backend})", [sys.executable, str(Path(__file__).with_name("serve_flask_baseline.py")),
                                                  ref, "--backend", flask_backend, *threads], "/ping", "/predict")


def measure_servers(started: list[Server], images: list[bytes], args: argparse.Namespace, workdir: Path) -> list[Run]:
    """Start every server, warm each up, then for each client count run each server in turn."""
    processes = []
    try:
        for server in started:
            processes.append(start(server, workdir / f"{server.port}.log"))
        requests = {s.name: [multipart_request(s.classify_path, s.port, image) for image in images] for s in started}
        args.cpu_split = {s.name: cpu_split(s) for s in started if s.name.startswith(SERVE)}
        for name, split in args.cpu_split.items():
            print(f"{name} cpu split: {split}", flush=True)
        for server in started:  # a first answer (a lazily built model is built now), then warm-up load
            httpx.post(server.url(server.classify_path), files={"file": ("image.jpg", images[0])}, timeout=300)
            asyncio.run(closed_loop(server.name, server.port, requests[server.name], max(args.clients), args.warmup,
                                    args.max_requests))
        runs = []
        for clients in args.clients:
            for server in started:
                runs.append(measure_run(server, requests[server.name], clients, args))
                print(_row(runs[-1].summary()), flush=True)
        return runs
    finally:
        for process in processes:
            stop(process)


def measure_run(server: Server, requests: list[bytes], clients: int, args: argparse.Namespace) -> Run:
    before = batch_totals(server) if server.name.startswith(SERVE) else None
    run = asyncio.run(closed_loop(server.name, server.port, requests, clients, args.seconds, args.max_requests))
    if before:
        images_done, batches = (a - b for a, b in zip(batch_totals(server), before))
        run.mean_batch = round(images_done / batches, 2) if batches else None
    return run


@dataclass
class Offline:
    """The offline rates: forward-only and serial end-to-end (decode + preprocess, then forward) images/s."""

    forward_ips: float
    end_to_end_ips: float
    decode_ms: float
    load_average: float


def offline_ceilings(ref: str, images: list[bytes], args: argparse.Namespace) -> Offline:
    """Forward-only images/s at the batch size (batch / p50 time, as ``resnetkit bench``), and end-to-end
    images/s = 1 / (decode + preprocess ms per image of ``images`` + forward ms per image)."""
    pre = get_spec(args.model).meta().preprocessing
    # decoding first: some backends' worker threads keep spinning for a while after a forward pass
    decode = time_calls(lambda: [prepare_image(d, pre) for d in images], warmup=1, min_runs=3, min_seconds=2.0)
    decode_ms = decode.p50_ms / len(images)
    classifier = load_model(ref, backend=args.backend,
                            options=RunnerOptions(batch_size=args.max_batch_size, threads=args.threads))
    batch = torch.randn(args.max_batch_size, *pre.input_shape)
    timing = time_calls(lambda: classifier.logits(batch), warmup=2, min_runs=5, min_seconds=5.0)
    forward_ms = timing.p50_ms / args.max_batch_size
    result = Offline(1000.0 / forward_ms, 1000.0 / (forward_ms + decode_ms), decode_ms, round(os.getloadavg()[0], 2))
    print(f"offline at batch {args.max_batch_size} ({classifier.ran.label()}): "
          f"forward-only {result.forward_ips:.1f} img/s, decode+preprocess {decode_ms:.2f} ms/img, end-to-end "
          f"(serial) {result.end_to_end_ips:.1f} img/s (load average {result.load_average})", flush=True)
    return result


COLUMNS = ("server", "clients", "throughput_rps", "p50_ms", "p90_ms", "p99_ms", "errors", "mean_batch",
           "load_average_1min")


def _row(summary: dict[str, Any]) -> str:
    return "  ".join(f"{str(summary[c]):>15}" if i else f"{summary[c]:<16}" for i, c in enumerate(COLUMNS))


def report(runs: list[Run], offline: list[Offline], args: argparse.Namespace) -> dict[str, Any]:
    ours = {r.clients: r for r in runs if r.server == SERVE}
    ratios = {f"{r.server} @ {r.clients}": round(ours[r.clients].throughput / r.throughput, 2)
              for r in runs if r.server != SERVE and r.throughput}
    best = max(r.throughput for r in ours.values())
    offline_ips = max((o.forward_ips for o in offline), default=None)  # the higher (less disturbed) one
    end_to_end = max((o.end_to_end_ips for o in offline), default=None)
    result = {"model": args.model, "weights": "real" if args.real_weights else "random",
              "max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms, "threads": args.threads, "backend": args.backend,
              "images": args.image_count, "cpu_split": getattr(args, "cpu_split", None),
              "runs": [r.summary() for r in runs],
              "throughput_ratio_serve_over_flask": ratios, "serve_best_rps": round(best, 1),
              "offline_throughput_ips": round(offline_ips, 1) if offline_ips else None,
              "offline_end_to_end_ips": round(end_to_end, 1) if end_to_end else None,
              "offline_measurements": [vars(o) for o in offline],
              "serve_fraction_of_offline": round(best / offline_ips, 3) if offline_ips else None,
              "serve_fraction_of_end_to_end": round(best / end_to_end, 3) if end_to_end else None,
              "environment": environment()}
    for versus, ratio in ratios.items():
        print(f"resnetkit serve / {versus} clients: throughput {ratio}x (same run, interleaved)")
    if offline_ips and end_to_end:
        print(f"resnetkit serve best {best:.1f} img/s = {100 * best / offline_ips:.1f} % of the offline forward-only "
              f"throughput {offline_ips:.1f} img/s and {100 * best / end_to_end:.1f} % of the offline serial end-to-end "
              f"rate {end_to_end:.1f} img/s at batch {args.max_batch_size}")
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cifar_resnet20", help="zoo architecture")
    parser.add_argument("--real-weights", action="store_true", help="serve the zoo weights (cached or downloaded)")
    parser.add_argument("--images", help="folder of JPEGs to send (default: from ../shared, else synthetic)")
    parser.add_argument("--clients", default="1,8,32", help="comma-separated concurrent client counts")
    parser.add_argument("--seconds", type=float, default=15.0, help=f"length of each run (at most {MAX_SECONDS})")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of unrecorded load first")
    parser.add_argument("--max-requests", type=int, default=200_000, help="cap on the requests of one run")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=None,
                        help="inference threads of both servers and of the offline run, given to their runners "
                             "(default: resnetkit serve chooses its split; Flask and the offline run use the "
                             "runtime's own)")
    parser.add_argument("--backend", help="backend of resnetkit serve and of the offline ceilings (default: auto)")
    parser.add_argument("--flask-backends", default="eager",
                        help="comma-separated backends of the Flask baseline, one server each (default: eager, the "
                             "classic PyTorch demo; 'eager,auto' adds the demo on resnetkit's default runtime)")
    parser.add_argument("--serve-variant", dest="serve_variants", action="append", default=[], metavar="ARGS",
                        help="also run resnetkit serve with these extra options, interleaved with the rest "
                             "(repeatable), e.g. --serve-variant='--instances 1'")
    parser.add_argument("--skip-flask", action="store_true")
    parser.add_argument("--skip-offline", action="store_true")
    parser.add_argument("--json", help="output file (default: results/serve_load_MODEL.json)")
    args = parser.parse_args(argv)
    args.clients = [int(c) for c in args.clients.split(",")]
    args.flask_backends = [] if args.skip_flask else [b for b in args.flask_backends.split(",") if b]
    if not 0 < args.seconds <= MAX_SECONDS or not 0 <= args.warmup <= MAX_SECONDS:
        parser.error(f"--seconds and --warmup must be at most {MAX_SECONDS}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        workdir = Path(tmp)
        ref = model_ref(args.model, args.real_weights, workdir)
        images = sample_images(args.model, args.images)
        args.image_count = len(images)
        print(f"{args.model} ({'real' if args.real_weights else 'random'} weights), {len(images)} images, "
              f"{args.seconds:.0f} s per run, inference threads {args.threads or 'chosen by each runtime'}")
        print(_row({c: c for c in COLUMNS}))
        offline = [] if args.skip_offline else [offline_ceilings(ref, images, args)]
        runs = measure_servers(list(servers(args.model, ref, args)), images, args, workdir)
        if offline:  # again after the load: other jobs on a shared machine can slow either measurement
            offline.append(offline_ceilings(ref, images, args))
    result = report(runs, offline, args)
    out = Path(args.json or ROOT / "results" / f"serve_load_{args.model}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {out}")
    return result


if __name__ == "__main__":
    main()
