"""Soak test: `resnetkit serve` at saturation for N minutes with valid and hostile uploads.

C closed-loop clients (loopback, raw HTTP/1.1 keep-alive) send a mix of requests: mostly valid
JPEGs, and hostile ones (not an image, truncated JPEG, empty body, a PNG header claiming
100,000 x 100,000 pixels, an animated GIF, a body above --max-upload-mb, a client that sends a
request and hangs up without reading the answer). Every answer is classed by kind and status;
an *error* is a valid request not answered 200, a hostile one not answered its 4xx, any 5xx, or a
dropped connection. Every window (default 30 s): throughput, p50/p99 latency of the valid
requests, the server's resident memory (VmRSS) and the load average.

    python benchmarks/serve_soak.py --model resnet18 --backend openvino --minutes 10 --clients 16
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import statistics
import struct
import sys
import tempfile
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import HOST, Server, exchange, model_ref, multipart_request, sample_images, start, stop  # noqa: E402

from resnetkit.choose.bench import environment  # noqa: E402
from resnetkit.core.fileio import write_text_atomic  # noqa: E402
from resnetkit.core.measure import percentile  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MAX_UPLOAD_MB = 2
EXPECTED = {"valid": 200, "not-image": 422, "truncated": 422, "empty": 422, "pixel-bomb": 422, "animated": 422,
            "oversized": 413}
HOSTILE_SHARE = 0.25


def hostile_payloads(valid: bytes) -> dict[str, bytes]:
    bomb = io.BytesIO()
    Image.new("RGB", (1, 1)).save(bomb, "PNG")
    data = bytearray(bomb.getvalue())
    chunk = b"IHDR" + struct.pack(">II", 100_000, 100_000) + bytes(data[24:29])
    data[12:29] = chunk
    data[29:33] = struct.pack(">I", zlib.crc32(chunk))
    gif = io.BytesIO()
    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "blue")]
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    return {"not-image": b"%PDF-1.4 this is not an image" * 20, "truncated": valid[: len(valid) // 3], "empty": b"",
            "pixel-bomb": bytes(data), "animated": gif.getvalue(),
            "oversized": os.urandom(MAX_UPLOAD_MB * 1024 * 1024 + 4096)}


@dataclass
class Window:
    start: float
    statuses: Counter = field(default_factory=Counter)
    valid_ms: list[float] = field(default_factory=list)
    errors: int = 0


class Soak:
    def __init__(self, server: Server, images: list[bytes], seconds: float, window_s: float, seed: int) -> None:
        self.server = server
        path = f"/v1/models/{server.name}/classify"
        fitting = [image for image in images if len(image) < MAX_UPLOAD_MB * 1024 * 1024 - 1024]
        if len(fitting) < len(images):  # a photo above the limit is rightly refused: it is not a valid request
            print(f"{len(images) - len(fitting)} of {len(images)} images are above --max-upload-mb {MAX_UPLOAD_MB}; "
                  "left out of the valid requests")
        self.valid = [multipart_request(path, server.port, image) for image in fitting]
        self.hostile = {kind: multipart_request(path, server.port, body)
                        for kind, body in hostile_payloads(images[0]).items()}
        self.rng = random.Random(seed)
        self.started = time.perf_counter()
        self.stop_at = self.started + seconds
        self.window_s = window_s
        self.windows: list[Window] = []
        self.by_class: Counter = Counter()

    def window(self) -> Window:
        index = int((time.perf_counter() - self.started) // self.window_s)
        while len(self.windows) <= index:
            self.windows.append(Window(self.started + len(self.windows) * self.window_s))
        return self.windows[index]

    def pick(self) -> tuple[str, bytes]:
        roll = self.rng.random()
        if roll < HOSTILE_SHARE:
            kinds = [*EXPECTED][1:] + ["hang-up"]
            kind = kinds[int(roll / HOSTILE_SHARE * len(kinds))]
            return kind, self.valid[0] if kind == "hang-up" else self.hostile[kind]
        return "valid", self.rng.choice(self.valid)

    async def client(self) -> None:
        connection = None
        while time.perf_counter() < self.stop_at:
            kind, request = self.pick()
            begin = time.perf_counter()
            try:
                connection = connection or await asyncio.open_connection(HOST, self.server.port)
                if kind == "hang-up":
                    connection[1].write(request)
                    await connection[1].drain()
                    connection[1].close()
                    connection, status, keep_alive = None, "hung up", False
                else:
                    status, keep_alive = await exchange(*connection, request)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                status, keep_alive = 0, False
            self.record(kind, status, (time.perf_counter() - begin) * 1000.0)
            if not keep_alive and connection:
                connection[1].close()
                connection = None
        if connection:
            connection[1].close()

    def record(self, kind: str, status: int | str, ms: float) -> None:
        window = self.window()
        self.by_class[(kind, status)] += 1
        window.statuses[status] += 1
        if kind == "valid" and status == 200:
            window.valid_ms.append(ms)
        expected = EXPECTED.get(kind, "hung up")
        if status != expected:
            window.errors += 1


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


async def run(soak: Soak, clients: int, pid: int) -> list[dict[str, Any]]:
    samples: list[dict[str, Any]] = []

    async def sampler() -> None:
        while time.perf_counter() < soak.stop_at:
            await asyncio.sleep(min(soak.window_s, max(0.0, soak.stop_at - time.perf_counter())))
            samples.append({"t_s": round(time.perf_counter() - soak.started, 1), "rss_mib": round(rss_mib(pid), 1),
                            "load_average": round(os.getloadavg()[0], 2)})

    await asyncio.gather(sampler(), *(soak.client() for _ in range(clients)))
    return samples


def summarize(soak: Soak, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for window, sample in zip(soak.windows, samples):
        ordered = sorted(window.valid_ms) or [float("nan")]
        rows.append({"t_s": sample["t_s"], "requests": sum(window.statuses.values()),
                     "valid_rps": round(len(window.valid_ms) / soak.window_s, 1),
                     "valid_p50_ms": round(statistics.median(ordered), 1),
                     "valid_p99_ms": round(percentile(ordered, 99), 1), "errors": window.errors,
                     "5xx": sum(n for s, n in window.statuses.items() if isinstance(s, int) and s >= 500),
                     "rss_mib": sample["rss_mib"], "load_average": sample["load_average"]})
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--backend", default=None)
    parser.add_argument("--real-weights", action="store_true")
    parser.add_argument("--images", help="folder of JPEGs to send (default: from ../shared, else synthetic)")
    parser.add_argument("--minutes", type=float, default=10.0, help="at most 60")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--window", type=float, default=30.0, help="seconds per reported window")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=ROOT / "results" / "serve_soak.json")
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= 60:
        parser.error("--minutes must be in (0, 60]")
    with tempfile.TemporaryDirectory(prefix="serve-soak-") as tmp:
        ref = model_ref(args.model, args.real_weights, Path(tmp))
        backend = ["--backend", args.backend] if args.backend else []
        server = Server(args.model, [sys.executable, "-m", "resnetkit", "serve", f"{args.model}={ref}", "--no-access-log",
                                     "--max-upload-mb", str(MAX_UPLOAD_MB), *backend], "/readyz", "")
        process = start(server, Path(tmp) / "server.log")
        try:
            soak = Soak(server, sample_images(args.model, args.images), args.minutes * 60.0, args.window, args.seed)
            print(f"{args.model} ({args.backend or 'default backend'}), {args.clients} clients, {args.minutes:g} min, "
                  f"{100 * HOSTILE_SHARE:.0f} % hostile requests; load average {os.getloadavg()[0]:.2f}", flush=True)
            samples = asyncio.run(run(soak, args.clients, process.pid))
            alive = process.poll() is None
        finally:
            stop(process)
    rows = summarize(soak, samples)
    columns = list(rows[0]) if rows else []
    print("  ".join(f"{c:>13}" for c in columns))
    for row in rows:
        print("  ".join(f"{row[c]!s:>13}" for c in columns))
    classes = {f"{kind} -> {status}": n for (kind, status), n in sorted(soak.by_class.items(), key=str)}
    for name, count in classes.items():
        print(f"{name:<28} {count:>8}")
    errors = sum(r["errors"] for r in rows)
    print(f"errors {errors}, 5xx {sum(r['5xx'] for r in rows)}, server alive at the end: {alive}; "
          f"RSS {rows[0]['rss_mib'] if rows else '?'} -> {rows[-1]['rss_mib'] if rows else '?'} MiB")
    result = {"model": args.model, "backend": args.backend, "clients": args.clients, "minutes": args.minutes,
              "hostile_share": HOSTILE_SHARE, "windows": rows, "by_class": classes, "errors": errors,
              "server_alive": alive, "environment": environment()}
    write_text_atomic(args.json, json.dumps(result, indent=2) + "\n")
    print(f"written {args.json}")
    return result


if __name__ == "__main__":
    main()
