"""Prometheus metrics of one app (its own registry, so several apps can live in one process)."""

from __future__ import annotations

import socket
import time
from typing import Iterator, Sequence

import torch
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..core.device import Device

CLIENT_CLOSED = 499  # nginx's status for "the client closed the connection before the response"
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TS_VERSION = "1.0"  # every served model has one version; TorchServe's default version name
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServeMetrics:
    """Requests and errors by route and status, latencies, batch sizes, queue depth, image outcomes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("resnetkit_http_requests", "HTTP requests by route and status.",
                                ["method", "route", "status"], registry=r)
        self.errors = Counter("resnetkit_http_errors", "HTTP responses with status >= 400 by route and status.",
                              ["method", "route", "status"], registry=r)
        self.latency = Histogram("resnetkit_http_request_duration_seconds", "Time from request to response.",
                                 ["method", "route"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("resnetkit_batch_size", "Images per forward pass.", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.inference = Histogram("resnetkit_inference_duration_seconds", "Time of one batched forward pass.",
                                   ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("resnetkit_queue_depth", "Images admitted and waiting for a forward pass "
                                 "(being decoded or queued).", ["model"], registry=r)
        self.images = Counter("resnetkit_images", "Images by outcome: ok, invalid, cancelled (client gone), "
                              "rejected (queue full).", ["model", "outcome"], registry=r)
        self.cpu_split = Gauge("resnetkit_cpu_split", "How the cores are shared: inference threads of each model "
                               "instance, instances per model, decode workers; chosen at start by measuring (or "
                               "--threads/--instances/--workers).",
                               ["role"], registry=r)
        # TorchServe's names, so its dashboards and alerts keep working. They are counters in TorchServe;
        # gauges here only because prometheus_client would rename a counter to *_total.
        ts_labels = ["model_name", "model_version", "hostname"]
        self.ts_requests = Gauge("ts_inference_requests_total", "TorchServe name: inference requests answered.",
                                 ts_labels, registry=r)
        self.ts_latency = Gauge("ts_inference_latency_microseconds", "TorchServe name: cumulative time of the "
                                "inference requests (queue + decode + forward pass), in microseconds.",
                                ts_labels, registry=r)
        self.ts_queue = Gauge("ts_queue_latency_microseconds", "TorchServe name: cumulative time images waited "
                              "in the queue for their batch, in microseconds.", ts_labels, registry=r)
        self._host = socket.gethostname()

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        if status >= 400:
            self.errors.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def observe_inference_request(self, model: str, seconds: float) -> None:
        """One request that reached ``model`` (any protocol), answered after ``seconds``."""
        self.ts_requests.labels(model, TS_VERSION, self._host).inc()
        self.ts_latency.labels(model, TS_VERSION, self._host).inc(seconds * 1e6)

    def observe_queue_wait(self, model: str, seconds: float) -> None:
        """Images of one batch waited ``seconds`` in total in the queue."""
        self.ts_queue.labels(model, TS_VERSION, self._host).inc(seconds * 1e6)

    def watch_gpus(self, devices: Sequence[Device]) -> None:
        """Report the memory of these GPUs on every scrape (nothing GPU-related appears without one)."""
        if devices:
            self.registry.register(GpuMemoryCollector(devices))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def gpu_memory(device: Device) -> dict[str, int]:
    """Bytes of ``device``'s memory held by this process's tensors (allocated), by PyTorch's caching allocator
    (reserved), and the most allocated at once since the process started (peak)."""
    index = device.torch
    return {"allocated": torch.cuda.memory_allocated(index), "reserved": torch.cuda.memory_reserved(index),
            "peak": torch.cuda.max_memory_allocated(index)}


class GpuMemoryCollector(Collector):
    """``resnetkit_gpu_memory_bytes{device, kind}``, read from PyTorch when /metrics is scraped."""

    NAME = "resnetkit_gpu_memory_bytes"
    HELP = ("GPU memory of the served models, read at each scrape: allocated by tensors, reserved by PyTorch's "
            "caching allocator, peak allocated since start.")

    def __init__(self, devices: Sequence[Device]) -> None:
        self.devices = list(devices)

    def describe(self) -> Iterator[GaugeMetricFamily]:  # the name, without touching the GPU at registration
        yield GaugeMetricFamily(self.NAME, self.HELP, labels=["device", "kind"])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.NAME, self.HELP, labels=["device", "kind"])
        for device in self.devices:
            for kind, value in gpu_memory(device).items():
                family.add_metric([str(device), kind], value)
        yield family


class MetricsMiddleware:
    """Pure ASGI middleware (no body buffering) recording each HTTP request under its route template."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = CLIENT_CLOSED

        async def send_and_record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record_status)
        except Exception:
            status = 500
            raise
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.observe_request(scope["method"], route, status, time.perf_counter() - start)
