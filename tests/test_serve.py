"""`resnetkit serve` against a real uvicorn on 127.0.0.1 (free port, in a thread of this process).

Batching, client disconnects, a full queue and draining on shutdown are made deterministic with a
test backend whose forward pass waits at a gate the test opens; no assertion depends on timing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from conftest import damaged_dds, make_image, png_header_claiming
from resnetkit.core.artifacts import save_artifact
from resnetkit.core.device import Device, cuda_count, usable_cores
from resnetkit.core.errors import ResnetkitError
from resnetkit.run.loading import Classifier, load_model
from resnetkit.core.images import prepare_image
from resnetkit.run.classify import Prediction, classify, predict_tensors
from resnetkit.backends.base import Backend, register, registered
from resnetkit.backends.eager import EagerRunner
from resnetkit.serve import ServerThread, ServeSettings
from resnetkit.serve.batcher import WORTHWHILE_FORWARD_S, DynamicBatcher, batch_sizes
from resnetkit.core.samples import typical_upload
from resnetkit.serve.cpu_split import (TRIAL_BATCH, candidate_layouts, fastest_split, fixed_split, gpu_split,
                                       layout_for, pipeline_rate)
from resnetkit.serve.hub import load_served
from resnetkit.serve.metrics import ServeMetrics
from resnetkit.serve.settings import ModelEntry
from resnetkit.core.zoo import get_spec

CLASSIFY = "/v1/models/cifar_resnet20/classify"


# --- a backend whose forward pass waits until the test opens the gate -----------------------------

class Gate:
    def __init__(self) -> None:
        self.opened = threading.Event()
        self.entered = threading.Event()
        self.opened.set()
        self.threads_seen: list[int | None] = []  # the intra-op threads of each runner that entered

    @contextlib.contextmanager
    def closed(self) -> Iterator["Gate"]:
        self.entered.clear()
        self.opened.clear()
        self.threads_seen.clear()
        try:
            yield self
        finally:
            self.opened.set()


GATE = Gate()


@dataclass
class GatedRunner:
    inner: EagerRunner
    threads: int | None = None
    backend: str = "test-gated"
    precision: str = "fp32"

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        GATE.threads_seen.append(self.threads)
        GATE.entered.set()
        assert GATE.opened.wait(60), "the test never opened the gate"
        return self.inner(batch)


@dataclass
class RecordingRunner:
    """Eager, recording the batch sizes it runs; while the test sets POISONED, every logit is NaN (what a diverged
    checkpoint computes)."""

    inner: EagerRunner
    backend: str = "test-recording"
    precision: str = "fp32"

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        BATCHES_SEEN.append(len(batch))
        logits = self.inner(batch)
        return logits * float("nan") if POISONED.is_set() else logits


BATCHES_SEEN: list[int] = []
POISONED = threading.Event()

if "test-gated" not in [b.name for b in registered()]:
    register(Backend("test-gated", "eager behind a gate the test opens", ("fp32",),
                     lambda module, meta, options: GatedRunner(EagerRunner(module), options.threads)))
    register(Backend("test-recording", "eager, recording the batch sizes it runs", ("fp32",),
                     lambda module, meta, options: RecordingRunner(EagerRunner(module))))


# --- helpers --------------------------------------------------------------------------------------

@contextlib.contextmanager
def running(**settings) -> Iterator[ServerThread]:
    """A ready server on a free loopback port, stopped (gracefully) at the end."""
    server = ServerThread(ServeSettings(**{"port": 0, "access_log": False, **settings})).start()
    try:
        server.wait_ready()
        yield server
    finally:
        GATE.opened.set()
        server.stop()


def metric(url: str, name: str, **labels: str) -> float:
    """The value of one sample of the server's /metrics (0 if absent)."""
    text = httpx.get(f"{url}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def jpeg_bytes(size: tuple[int, int] = (64, 48), seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise(size, 40 + seed).convert("RGB").save(buffer, "JPEG")
    return buffer.getvalue()


def animated_gif() -> bytes:
    buffer = io.BytesIO()
    frames = [Image.new("RGB", (16, 16), color) for color in ("red", "blue")]
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100)
    return buffer.getvalue()


# --- fixtures -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def random_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cifar_resnet20 with random weights as a resnetkit artifact (no ../shared needed)."""
    spec = get_spec("cifar_resnet20")
    torch.manual_seed(0)
    return save_artifact(tmp_path_factory.mktemp("serve") / "random20.pt", spec.build().eval(),
                         spec.meta(random=True))


@pytest.fixture(scope="module")
def server_thread(random_model: Path) -> Iterator[ServerThread]:
    """One server for the API and bad-input tests: 4 MB uploads, 4 files, 1 Mpixel per image."""
    with running(models=(str(random_model),), max_upload_mb=4, max_files=4, max_pixels=1_000_000) as running_server:
        yield running_server


@pytest.fixture(scope="module")
def server(server_thread: ServerThread) -> str:
    return server_thread.url


def served_classifier(server: ServerThread, name: str) -> Classifier:
    """The classifier the in-process server runs (call it only while the server is idle)."""
    return server.app.state.hub.get(name).classifier


def sample(metrics: ServeMetrics, name: str) -> float:
    """The value of metric ``name`` for model ``m`` in ``metrics``."""
    families = text_string_to_metric_families(metrics.render()[0].decode())
    return next(s.value for f in families for s in f.samples if s.name == name and s.labels.get("model") == "m")


def served_runners(server: ServerThread, name: str) -> list[Classifier]:
    """What the server may run an image on: its first instance (the others are copies of it) and, with several
    instances, the copy on every thread that runs a lone image."""
    served = server.app.state.hub.get(name)
    return [served.classifier, *([served.batcher.alone] if served.batcher.alone else [])]


@pytest.fixture(scope="module")
def cifar_images(cifar_test_dir: Path) -> list[Path]:
    """Two test images of each CIFAR-10 class."""
    return [path for folder in sorted(cifar_test_dir.iterdir()) for path in sorted(folder.glob("*.jpg"))[:2]]


# --- API ------------------------------------------------------------------------------------------

def test_health_readiness_and_model_listing(server):
    assert httpx.get(f"{server}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server}/readyz").json()["ready"] is True
    assert httpx.get(f"{server}/ping").json() == {"status": "Healthy"}
    [model] = httpx.get(f"{server}/v1/models").json()["models"]
    assert model["name"] == "cifar_resnet20" and model["num_classes"] == 10 and model["weights"] == "random"
    assert model["input_size"] == 32 and model["chosen_by_auto"] and model["runtime"].endswith(" on CPU (auto)")  # auto: the default backend
    assert model["published_top1"] is None and model["published_source"] == ""  # random weights: no figure
    assert httpx.get(f"{server}/v1/models/cifar_resnet20").json()["categories"][3] == "cat"


@pytest.mark.slow
def test_multipart_and_raw_body_give_the_same_answers_as_the_library(server, server_thread, tmp_path):
    """The server's answers are the library's fast pipeline (prepare_image) + a served runner (an instance, or the
    copy on every thread for a lone image), image by image (the server may run another backend than a fresh
    load_model: auto tunes it for the CPU split's threads)."""
    paths = [make_image(tmp_path / f"{i}.png", (40 + 10 * i, 30), seed=i) for i in range(3)]
    runners = served_runners(server_thread, "cifar_resnet20")
    expected = [[predict_tensors(runner, prepare_image(p, runner.meta.preprocessing).unsqueeze(0), 3)[0]
                 for runner in runners] for p in paths]

    def from_a_served_runner(got: list[dict], wanted: list[list[Prediction]]) -> bool:
        return any([p["index"] for p in got] == [p.index for p in want]
                   and [p["score"] for p in got] == pytest.approx([p.score for p in want], abs=1e-5) for want in wanted)

    files = [("file", (p.name, p.read_bytes(), "image/png")) for p in paths]
    response = httpx.post(f"{server}{CLASSIFY}?top_k=3", files=files)
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "cifar_resnet20" and body["latency_ms"] > 0
    assert [r["filename"] for r in body["results"]] == [p.name for p in paths]
    for got, wanted in zip(body["results"], expected):
        assert got["error"] is None and from_a_served_runner(got["predictions"], wanted)
    raw = httpx.post(f"{server}{CLASSIFY}?top_k=3", content=paths[0].read_bytes()).json()
    assert raw["results"][0]["filename"] is None and from_a_served_runner(raw["results"][0]["predictions"], expected[0])


def test_top_k_larger_than_the_classes_returns_every_class(server):
    result = httpx.post(f"{server}{CLASSIFY}?top_k=50", content=jpeg_bytes()).json()["results"][0]
    assert sorted(p["index"] for p in result["predictions"]) == list(range(10))


@pytest.mark.parametrize("data, message", [
    (b"this is not an image", "not an image format"),
    (b"", "empty"),
    (jpeg_bytes((200, 200))[:300], "truncated"),
    (png_header_claiming(0, 5), "not an image format"),
    (png_header_claiming(100_000, 100_000), "decompression bomb"),
    (png_header_claiming(2000, 1000), "above the limit of 1,000,000"),
    (animated_gif(), "animated or multi-frame"),
    (damaged_dds(), "Unknown pixel format flags"),  # NotImplementedError inside Pillow: was a 500
], ids=["not-image", "empty", "truncated", "zero-size", "bomb", "pixel-cap", "animated", "damaged-dds"])
def test_bad_images_get_a_clear_422_and_the_server_keeps_serving(server, data, message):
    response = httpx.post(f"{server}{CLASSIFY}", content=data)
    assert response.status_code == 422
    [result] = response.json()["results"]
    assert message in result["error"] and result["predictions"] == []
    assert httpx.post(f"{server}{CLASSIFY}", content=jpeg_bytes()).status_code == 200


def test_one_bad_file_does_not_fail_the_others(server):
    files = [("file", ("good.jpg", jpeg_bytes(), "image/jpeg")), ("file", ("bad.jpg", b"garbage", "image/jpeg")),
             ("file", ("good2.jpg", jpeg_bytes(seed=1), "image/jpeg"))]
    response = httpx.post(f"{server}{CLASSIFY}", files=files)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["error"] is None for r in results] == [True, False, True]
    assert "not an image format" in results[1]["error"] and len(results[0]["predictions"]) == 5


@pytest.mark.parametrize("query", ["top_k=0", "top_k=-3", "top_k=abc", "top_k=1001"])
def test_bad_top_k_is_422_with_a_readable_message(server, query):
    response = httpx.post(f"{server}{CLASSIFY}?{query}", content=jpeg_bytes())
    assert response.status_code == 422 and response.json()["detail"].startswith("top_k: ")


def test_unknown_model_is_404_and_names_the_served_ones(server):
    response = httpx.post(f"{server}/v1/models/resnet50/classify", content=jpeg_bytes())
    assert response.status_code == 404 and "cifar_resnet20" in response.json()["detail"]
    assert httpx.get(f"{server}/v1/models/../../etc/passwd").status_code == 404


def test_upload_above_the_limit_is_413_with_or_without_content_length(server):
    big = b"\xff" * (5 * 1024 * 1024)
    declared = httpx.post(f"{server}{CLASSIFY}", content=big)
    assert declared.status_code == 413 and "limit is 4.00 MiB" in declared.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        for _ in range(5):
            yield b"\xff" * (1024 * 1024)

    streamed = httpx.post(f"{server}{CLASSIFY}", content=chunks())
    assert streamed.status_code == 413 and "more than" in streamed.json()["detail"]
    assert httpx.get(f"{server}/healthz").status_code == 200


def test_too_many_files_is_413(server):
    files = [("file", (f"{i}.jpg", jpeg_bytes(seed=i), "image/jpeg")) for i in range(5)]
    response = httpx.post(f"{server}{CLASSIFY}", files=files)
    assert response.status_code == 413 and "limit is 4" in response.json()["detail"]


def test_multipart_without_a_file_field_is_422(server):
    response = httpx.post(f"{server}{CLASSIFY}", files=[("image", ("a.jpg", jpeg_bytes(), "image/jpeg"))])
    assert response.status_code == 422 and "field named 'file'" in response.json()["detail"]


def test_uploads_are_never_spooled_to_disk(server, monkeypatch, tmp_path):
    """A 3 MB part is above Starlette's 1 MB spooling threshold: it must still stay in memory."""
    import tempfile

    rollovers = []
    original = tempfile.SpooledTemporaryFile.rollover
    monkeypatch.setattr(tempfile.SpooledTemporaryFile, "rollover",
                        lambda self: rollovers.append(1) or original(self))
    photo = make_image(tmp_path / "noise.png", (1000, 1000))
    assert photo.stat().st_size > 2 * 1024 * 1024
    response = httpx.post(f"{server}{CLASSIFY}", files=[("file", ("noise.png", photo.read_bytes(), "image/png"))])
    assert response.status_code == 200 and rollovers == []


def test_torchserve_compatible_endpoints(server):
    image = jpeg_bytes()
    put = httpx.put(f"{server}/predictions/cifar_resnet20", content=image)
    post = httpx.post(f"{server}/predictions/cifar_resnet20", files={"data": ("x.jpg", image, "image/jpeg")})
    assert put.status_code == post.status_code == 200
    assert put.json() == post.json() and len(put.json()) == 5
    assert sum(put.json().values()) <= 1.0 and all(isinstance(v, float) for v in put.json().values())
    missing = httpx.post(f"{server}/predictions/nope", content=image)
    assert missing.status_code == 404 and missing.json()["type"] == "ModelNotFoundException"
    bad = httpx.post(f"{server}/predictions/cifar_resnet20", content=b"junk")
    assert bad.status_code == 422 and "not an image" in bad.json()["message"]


def test_metrics_count_requests_by_route_and_status(server):
    httpx.post(f"{server}/v1/models/nope/classify", content=b"x")
    text = httpx.get(f"{server}/metrics").text
    assert 'resnetkit_http_requests_total{method="POST",route="/v1/models/{model}/classify",status="404"}' in text
    assert 'resnetkit_http_errors_total{method="POST",route="/v1/models/{model}/classify",status="413"}' in text
    for name in ("resnetkit_http_request_duration_seconds_bucket", "resnetkit_batch_size_bucket",
                 "resnetkit_queue_depth", 'resnetkit_images_total{model="cifar_resnet20",outcome="invalid"}'):
        assert name in text


def test_openapi_docs_and_page_work_offline(server):
    schema = httpx.get(f"{server}/openapi.json").json()
    assert {"/v1/models/{model}/classify", "/predictions/{model}", "/v1/models", "/readyz"} <= set(schema["paths"])
    assert "multipart/form-data" in schema["paths"]["/v1/models/{model}/classify"]["post"]["requestBody"]["content"]
    docs = httpx.get(f"{server}/docs").text
    assert "swagger-ui-bundle.js" in docs and "cdn" not in docs
    page = httpx.get(f"{server}/").text
    assert 'id="files"' in page
    for asset in ("/static/app.js", "/static/style.css"):
        response = httpx.get(f"{server}{asset}")
        assert response.status_code == 200 and "http://" not in response.text and "https://" not in response.text


@pytest.mark.slow
def test_bearer_token_protects_the_api_but_not_the_probes(random_model):
    with running(models=(str(random_model),), token="s3cret") as srv:
        url = srv.url
        assert httpx.post(f"{url}{CLASSIFY}", content=jpeg_bytes()).status_code == 401
        wrong = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        assert httpx.put(f"{url}/predictions/cifar_resnet20", content=jpeg_bytes()).status_code == 401
        ok = httpx.post(f"{url}{CLASSIFY}", content=jpeg_bytes(), headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert httpx.get(f"{url}/healthz").status_code == httpx.get(f"{url}/readyz").status_code == 200


# --- batching and concurrency ---------------------------------------------------------------------

@pytest.mark.slow
def test_many_simultaneous_requests_each_get_their_own_answer(cifar_weights, cifar_images):
    # eager: auto's tuning (~20 s here) is what the module's server checks; this is about concurrent requests
    with running(models=("cifar_resnet20",), max_batch_size=16, backend="eager") as srv, httpx.Client() as client:
        served = served_classifier(srv, "cifar_resnet20")
        expected = dict(zip(cifar_images, classify(served, cifar_images, top_k=3, batch_size=1)))
        def ask(path: Path) -> tuple[Path, list[dict]]:
            response = client.post(f"{srv.url}{CLASSIFY}?top_k=3", files={"file": (path.name, path.read_bytes())})
            return path, response.json()["results"][0]["predictions"]

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(ask, cifar_images * 3))
    for path, got in answers:
        want = expected[path].predictions
        assert [p["label"] for p in got] == [p.label for p in want]
        assert [p["score"] for p in got] == pytest.approx([p.score for p in want], abs=1e-5)
    correct = sum(got[0]["label"] == path.parent.name for path, got in answers)
    assert correct >= len(answers) // 2  # real weights: most CIFAR test images are right


def test_requests_arriving_while_the_model_is_busy_form_one_batch(cifar_weights, cifar_images):
    images = cifar_images[:9]  # 1 alone, then 8: a batch size the batcher forms (a power of two)
    expected = classify(load_model("cifar_resnet20", backend="eager"), images, top_k=2, batch_size=1)
    with running(models=("cifar_resnet20",), backend="test-gated", max_batch_size=32, instances=1) as srv:
        with GATE.closed(), ThreadPoolExecutor(len(images)) as pool:
            ask = lambda p: httpx.post(f"{srv.url}{CLASSIFY}?top_k=2", content=p.read_bytes(), timeout=60)  # noqa: E731
            first = pool.submit(ask, images[0])
            assert GATE.entered.wait(30)  # the first image is in the forward pass, alone
            rest = [pool.submit(ask, p) for p in images[1:]]
            wait_until(lambda: metric(srv.url, "resnetkit_queue_depth", model="cifar_resnet20") == len(rest),
                       "the other requests to queue")
            GATE.opened.set()
            responses = [first.result()] + [f.result() for f in rest]
        assert metric(srv.url, "resnetkit_batch_size_count", model="cifar_resnet20") == 2
        assert metric(srv.url, "resnetkit_batch_size_sum", model="cifar_resnet20") == len(images)
        assert metric(srv.url, "resnetkit_batch_size_bucket", model="cifar_resnet20", le="1.0") == 1
    for response, want in zip(responses, expected):
        got = response.json()["results"][0]["predictions"]
        assert [p["label"] for p in got] == [p.label for p in want.predictions]
        assert [p["score"] for p in got] == pytest.approx([p.score for p in want.predictions], abs=1e-5)


def _send_raw_request(url: str, body: bytes) -> socket.socket:
    """Send a complete classify request on a raw socket and return it without reading the answer."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(f"POST {CLASSIFY} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    return sock


def test_client_disconnects_drop_queued_work(random_model):
    with running(models=(str(random_model),), backend="test-gated", instances=1) as srv, ThreadPoolExecutor(1) as pool:
        with GATE.closed():
            busy = pool.submit(httpx.post, f"{srv.url}{CLASSIFY}", content=jpeg_bytes(), timeout=60)
            assert GATE.entered.wait(30)
            leaving = [_send_raw_request(srv.url, jpeg_bytes(seed=i)) for i in range(3)]
            wait_until(lambda: metric(srv.url, "resnetkit_queue_depth", model="cifar_resnet20") == 3, "queued")
            for sock in leaving:
                sock.close()
            wait_until(lambda: metric(srv.url, "resnetkit_http_requests_total", status="499") == 3, "disconnects seen")
        assert busy.result().status_code == 200
        wait_until(lambda: metric(srv.url, "resnetkit_images_total", outcome="cancelled") == 3, "dropped images")
        assert metric(srv.url, "resnetkit_batch_size_sum", model="cifar_resnet20") == 1  # none reached the model
        assert metric(srv.url, "resnetkit_queue_depth", model="cifar_resnet20") == 0
        assert httpx.post(f"{srv.url}{CLASSIFY}", content=jpeg_bytes()).status_code == 200


def test_full_queue_answers_503_with_retry_after(random_model):
    with running(models=(str(random_model),), backend="test-gated", max_queue=2, max_files=2,
                 instances=1) as srv, ThreadPoolExecutor(2) as pool:
        with GATE.closed():
            admitted = [pool.submit(httpx.post, f"{srv.url}{CLASSIFY}", content=jpeg_bytes(), timeout=60)]
            assert GATE.entered.wait(30)
            admitted.append(pool.submit(httpx.post, f"{srv.url}{CLASSIFY}", content=jpeg_bytes(), timeout=60))
            wait_until(lambda: metric(srv.url, "resnetkit_queue_depth", model="cifar_resnet20") == 1, "queued")
            refused = httpx.post(f"{srv.url}{CLASSIFY}", content=jpeg_bytes())
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert "limit 2" in refused.json()["detail"]
        assert [f.result().status_code for f in admitted] == [200, 200]


def test_shutdown_drains_in_flight_requests(random_model):
    with running(models=(str(random_model),), backend="test-gated", instances=1) as srv, ThreadPoolExecutor(2) as pool:
        with GATE.closed():
            in_flight = pool.submit(httpx.post, f"{srv.url}{CLASSIFY}", content=jpeg_bytes(), timeout=60)
            assert GATE.entered.wait(30)
            stopping = pool.submit(srv.stop)  # what SIGTERM / Ctrl-C do
            wait_until(lambda: srv.server.should_exit, "shutdown to start")
        assert in_flight.result().status_code == 200
        stopping.result()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{srv.url}/healthz")


def test_a_model_computing_nan_is_a_json_500_in_each_protocol_and_the_server_goes_on(random_model):
    name = "cifar_resnet20"  # the served name: the artifact's model name
    with running(models=(str(random_model),), backend="test-recording", instances=1) as srv:
        POISONED.set()
        try:
            own = httpx.post(f"{srv.url}/v1/models/{name}/classify", content=jpeg_bytes(), timeout=60)
            torchserve = httpx.post(f"{srv.url}/predictions/{name}", content=jpeg_bytes(), timeout=60)
            v2 = httpx.post(f"{srv.url}/v2/models/{name}/infer", timeout=60, json={"inputs": [
                {"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(jpeg_bytes()).decode()]}]})
        finally:
            POISONED.clear()
        assert [r.status_code for r in (own, torchserve, v2)] == [500, 500, 500]
        for message in (own.json()["detail"], torchserve.json()["message"], v2.json()["error"]):
            assert message.startswith(f"{name} computed outputs that are not numbers (NaN or inf) for 1 of 1 images")
        assert httpx.post(f"{srv.url}/v1/models/{name}/classify", content=jpeg_bytes(), timeout=60).status_code == 200


def test_a_model_that_cannot_be_loaded_stops_the_server_with_its_message(tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    server = ServerThread(ServeSettings(models=(str(broken),), port=0)).start()
    with pytest.raises(Exception, match="Could not load the models"):
        server.wait_ready()
    server.stop()


# --- settings (pydantic-settings) -----------------------------------------------------------------

def test_settings_read_the_process_environment_and_keyword_arguments_win(monkeypatch):
    monkeypatch.setenv("RESNETKIT_MODELS", "a=resnet18, cifar_resnet20")
    monkeypatch.setenv("RESNETKIT_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("RESNETKIT_THREADS", "")  # empty: ignored, as if unset
    monkeypatch.setenv("RESNETKIT_TOKEN", "s3cret")
    settings = ServeSettings(max_batch_size=4)
    assert settings.models == ("a=resnet18", "cifar_resnet20") and settings.max_batch_size == 4
    assert settings.threads is None and settings.token == "s3cret"
    assert [(e.name, e.ref) for e in settings.entries] == [("a", "resnet18"), (None, "cifar_resnet20")]
    assert "s3cret" not in repr(settings)
    assert ServeSettings.model_construct().max_batch_size == 32  # the CLI's help shows the real defaults


@pytest.mark.parametrize("env, message", [
    ({"RESNETKIT_MAX_WAIT_MS": "fast"}, "RESNETKIT_MAX_WAIT_MS='fast' is not a valid float."),
    ({"RESNETKIT_ACCESS_LOG": "maybe"}, "RESNETKIT_ACCESS_LOG='maybe' is not a valid bool."),
    ({"RESNETKIT_WORKERS": "0"}, "--workers must be positive (got 0)."),
    ({"RESNETKIT_PORT": "70000"}, "--port must be between 0 and 65535 (got 70000)."),
    ({"RESNETKIT_MAX_WAIT_MS": "-1"}, "--max-wait-ms must be zero or more (got -1.0)."),
])
def test_bad_environment_values_raise_one_clear_sentence(monkeypatch, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ResnetkitError) as caught:
        ServeSettings()
    assert str(caught.value) == message
    with pytest.raises(ResnetkitError) as caught:
        ServeSettings.from_env(env)
    assert str(caught.value) == message


def test_settings_are_frozen_and_refuse_unknown_fields():
    with pytest.raises(ResnetkitError, match="--max-batchsize: Extra inputs are not permitted"):
        ServeSettings(max_batchsize=3)
    with pytest.raises(Exception, match="frozen"):
        ServeSettings().port = 1  # type: ignore[misc]


# --- the CPU split and the batch sizes ------------------------------------------------------------

def test_cpu_split_tries_one_instance_and_instances_sharing_the_cores():
    assert candidate_layouts(1) == [(1, 1)]
    assert candidate_layouts(2) == [(1, 1), (1, 2), (2, 1)]
    assert candidate_layouts(8) == [(1, 4), (1, 7), (1, 8), (2, 4), (4, 2)]
    assert layout_for(8, threads=None, instances=2) == (2, 4) and layout_for(8, threads=3, instances=None) == (1, 3)
    assert layout_for(2, threads=None, instances=4) == (4, 1)  # never fewer than one thread


def test_cpu_split_keeps_the_fastest_measured_layout():
    split = fastest_split({(1, 1): 58.3, (1, 2): 83.3, (2, 1): 97.3}, cores=2)
    assert (split.instances, split.threads, split.workers, split.alone_threads) == (2, 1, 1, 2)
    assert split.describe() == ("2 instance(s) x 1 inference thread(s) per model (and one on 2 threads for a lone "
                                "batch), 1 decode worker(s) on 2 cores (measured decode + inference pipeline: 1 x 1 "
                                "thread(s) 58.3 img/s, 1 x 2 thread(s) 83.3 img/s, 2 x 1 thread(s) 97.3 img/s)")
    one = fastest_split({(1, 4): 300.0, (1, 7): 310.0, (1, 8): 290.0, (2, 4): 305.0}, cores=8)
    assert (one.instances, one.threads, one.workers, one.alone_threads) == (1, 7, 1, None)
    assert (fastest_split({(2, 1): 5.0, (1, 2): 5.0, (1, 1): 5.0}, 2).instances,
            fastest_split({(2, 1): 5.0, (1, 2): 5.0, (1, 1): 5.0}, 2).threads) == (1, 1)  # a tie: fewer threads
    assert fastest_split({(1, 1): 1.0, (2, 1): 2.0}, cores=2, workers=3).workers == 3  # --workers wins
    assert fixed_split(2, 4, cores=16).workers == 8  # the cores the instances' threads leave
    assert fixed_split(1, 2, cores=2).describe() == ("1 instance(s) x 2 inference thread(s) per model, 1 decode "
                                                     "worker(s) on 2 cores (as asked)")


class Counting:
    """A runner that records the batches it runs, and in which thread."""

    backend, precision = "counting", "fp32"

    def __init__(self, model: Classifier) -> None:
        self.model = model
        self.seen: list[torch.Tensor] = []
        self.threads: set[str] = set()

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.seen.append(batch)
        self.threads.add(threading.current_thread().name)
        return self.model.runner(batch)


def test_pipeline_rate_runs_decoded_uploads_in_trial_batches(random_model):
    model = load_model(random_model, backend="eager")
    counting = Counting(model)
    rate = pipeline_rate([[Classifier(model.meta, counting)]], workers=1, seconds=0.2)
    assert rate > 0 and len(counting.seen) >= 2  # the warm-up batch and at least one timed one
    assert all(batch.shape == (TRIAL_BATCH, 3, 32, 32) for batch in counting.seen)
    assert torch.equal(counting.seen[-1][0], prepare_image(typical_upload(model.meta.preprocessing),
                                                          model.meta.preprocessing))


def test_pipeline_rate_runs_every_instance_in_its_own_thread(random_model):
    model = load_model(random_model, backend="eager")
    instances = [Counting(model), Counting(model)]
    assert pipeline_rate([[Classifier(model.meta, c) for c in instances]], workers=1, seconds=0.2) > 0
    assert all(len(c.seen) >= 2 for c in instances)  # each warmed up and timed
    timed_in = [c.threads - {threading.current_thread().name} for c in instances]
    assert all(len(names) == 1 for names in timed_in) and timed_in[0] != timed_in[1]


def test_typical_upload_is_a_jpeg_of_the_usual_size():
    photo = Image.open(io.BytesIO(typical_upload(get_spec("resnet18").meta().preprocessing)))
    tiny = Image.open(io.BytesIO(typical_upload(get_spec("cifar_resnet20").meta().preprocessing)))
    assert (photo.format, photo.size, tiny.size) == ("JPEG", (640, 480), (32, 32))


def test_batches_come_in_few_sizes():
    assert batch_sizes(32) == [1, 2, 4, 8, 16, 32]
    assert batch_sizes(24) == [1, 2, 4, 8, 16, 24]
    assert batch_sizes(1) == [1]


def test_the_server_reports_its_split_and_runs_on_it(server, server_thread):
    threads = metric(server, "resnetkit_cpu_split", role="inference_threads")
    assert threads >= 1 and metric(server, "resnetkit_cpu_split", role="decode_workers") >= 1
    assert served_classifier(server_thread, "cifar_resnet20").ran.threads == threads  # built for the split


def test_two_instances_share_two_images_admitted_together(random_model):
    """Two images admitted together run as two batches of one, on both instances at once, not as a batch of two."""
    with running(models=(str(random_model),), backend="test-gated", instances=2, threads=1) as srv:
        assert metric(srv.url, "resnetkit_cpu_split", role="instances_per_model") == 2
        assert len(srv.app.state.hub.get("cifar_resnet20").batcher.instances) == 2
        two = [("file", (f"{i}.jpg", jpeg_bytes(seed=i), "image/jpeg")) for i in range(2)]
        with ThreadPoolExecutor(1) as pool, GATE.closed():
            answer = pool.submit(httpx.post, f"{srv.url}{CLASSIFY}", files=two, timeout=60)
            wait_until(lambda: metric(srv.url, "resnetkit_batch_size_count", model="cifar_resnet20") == 2,
                       "both images to be in forward passes")
            assert metric(srv.url, "resnetkit_queue_depth", model="cifar_resnet20") == 0
            assert GATE.threads_seen == [1, 1]  # on the one-thread instances
        assert len(answer.result().json()["results"]) == 2


def test_the_lone_batch_copy_runs_what_the_instances_run(random_model):
    """auto tunes per thread count; the copy on every thread is built with the instances' backend and precision."""
    with running(models=(str(random_model),), instances=2, threads=1, workers=1) as srv:
        served = srv.app.state.hub.get("cifar_resnet20")
        instance, alone = served.batcher.instances[0].ran, served.batcher.alone.ran
        assert (alone.backend, alone.precision) == (instance.backend, instance.precision)
        assert (instance.threads, alone.threads) == (1, 2)


def with_one_instance_busy(random_model: Path, later: int) -> list[float]:
    """Two gated one-thread instances, batches of up to 4, max_wait 10 s: one image holds the first instance, then
    ``later`` images arrive together. [images in forward passes, images queued] 0.3 s later, and the images run
    once the gate opens."""
    model = load_model(random_model, backend="eager")
    instances = [Classifier(model.meta, GatedRunner(EagerRunner(model.runner.module), 1)) for _ in range(2)]
    metrics = ServeMetrics()

    async def scenario() -> list[float]:
        with ThreadPoolExecutor(1) as decode_pool:
            batcher = DynamicBatcher("m", instances, lambda data: prepare_image(data, model.meta.preprocessing),
                                     decode_pool, metrics, max_batch_size=4, max_wait_ms=10_000, max_queue=8)
            batcher.start()
            with GATE.closed():
                first = asyncio.ensure_future(batcher.classify([jpeg_bytes(seed=0)], 1))
                await asyncio.to_thread(GATE.entered.wait, 30)  # the first image holds one instance
                more = asyncio.ensure_future(batcher.classify([jpeg_bytes(seed=i) for i in range(1, 1 + later)], 1))
                await asyncio.sleep(0.3)  # the 64x48 JPEGs are decoded within milliseconds
                held = [sample(metrics, "resnetkit_batch_size_sum"), sample(metrics, "resnetkit_queue_depth")]
            await asyncio.gather(first, more)
            await batcher.close()
            return held + [sample(metrics, "resnetkit_batch_size_sum")]

    return asyncio.run(scenario())


def test_with_an_instance_busy_a_batch_waits_to_fill_instead_of_splitting(random_model):
    """The second image does not go to the idle instance at once: it waits (here up to max_wait 10 s) to fill a
    batch, and goes when the busy instance is free."""
    assert with_one_instance_busy(random_model, 1) == [1.0, 1.0, 2.0]  # one in a forward pass, one queued; then both


def test_with_an_instance_busy_the_idle_one_takes_an_even_share_of_the_queue(random_model):
    """Four images fill a batch (max 4), and the idle instance takes two of them (an even share among the two
    instances), leaving two for whichever instance is free first."""
    assert with_one_instance_busy(random_model, 4) == [3.0, 2.0, 5.0]  # 1 + 2 in forward passes, 2 queued; then all


def test_light_models_are_not_split_below_a_worthwhile_forward_pass(random_model):
    """The share has a floor: the least batch size whose forward pass lasts WORTHWHILE_FORWARD_S on an instance (from
    the fastest pass per image seen), so cifar_resnet20 (0.4 ms an image) keeps whole batches and resnet18 (16 ms)
    is shared image by image."""
    model = load_model(random_model, backend="eager")
    with ThreadPoolExecutor(1) as pool:
        batcher = DynamicBatcher("m", [model, model], model.prepare, pool, ServeMetrics(), max_batch_size=32,
                                 max_wait_ms=5, max_queue=64)
        floors = []
        for seconds_per_image in (0.0, WORTHWHILE_FORWARD_S / 2.5, 0.0004, 0.016):
            batcher._seconds_per_image = seconds_per_image
            floors.append(batcher._worthwhile_batch())
    assert floors == [1, 4, 32, 1]  # unknown yet; 3 images -> batch size 4; 25 -> 32; 1


def test_a_lone_batch_runs_on_every_thread_and_holds_the_instances(random_model):
    """An image with nothing else in flight runs on the copy with both threads; one arriving meanwhile waits for it
    (the instances would take its cores), then runs alone too."""
    with running(models=(str(random_model),), backend="test-gated", instances=2, threads=1) as srv:
        with ThreadPoolExecutor(2) as pool, GATE.closed():
            ask = lambda seed: httpx.post(f"{srv.url}{CLASSIFY}", content=jpeg_bytes(seed=seed), timeout=60)  # noqa: E731
            answers = [pool.submit(ask, 0)]
            assert GATE.entered.wait(30) and GATE.threads_seen == [2]
            answers.append(pool.submit(ask, 1))
            wait_until(lambda: metric(srv.url, "resnetkit_queue_depth", model="cifar_resnet20") == 1,
                       "the second image to queue")
            assert metric(srv.url, "resnetkit_batch_size_count", model="cifar_resnet20") == 1
        assert [a.result().status_code for a in answers] == [200, 200]
        assert GATE.threads_seen == [2, 2]


def test_serve_threads_flag_reaches_the_runner(random_model):
    with running(models=(str(random_model),), threads=1, workers=1) as srv:
        runner = served_classifier(srv, "cifar_resnet20").runner
        assert runner.threads == 1 and runner.tuning.choice.threads == 1


def test_serving_leaves_torchs_own_thread_count_alone(random_model):
    """Threads are each runner's (RunnerOptions.threads), applied per call: serve never sets them for the process."""
    before = torch.get_num_threads()
    with running(models=(str(random_model),), threads=1, workers=1) as srv:
        assert httpx.post(f"{srv.url}{CLASSIFY}", content=jpeg_bytes()).status_code == 200
        assert served_classifier(srv, "cifar_resnet20").ran.threads == 1
        assert torch.get_num_threads() == before


def test_load_served_runs_every_batch_size_the_batcher_forms(random_model):
    """The one loading function of the local hub and the Ray replicas: warmed at every size of batch_sizes()."""
    BATCHES_SEEN.clear()
    settings = ServeSettings(backend="test-recording", max_batch_size=6)
    classifier = load_served(ModelEntry(str(random_model)), settings, threads=1)
    assert BATCHES_SEEN == batch_sizes(6) == [1, 2, 4, 6]
    assert classifier.ran.backend == "test-recording" and classifier.meta.name == "cifar_resnet20"


# --- devices, random weights ----------------------------------------------------------------------

def test_settings_read_the_device_and_random_weights(monkeypatch):
    monkeypatch.setenv("RESNETKIT_DEVICE", "CUDA:1")
    monkeypatch.setenv("RESNETKIT_RANDOM_WEIGHTS", "1")
    settings = ServeSettings()
    assert (settings.device, settings.random_weights) == ("cuda:1", True)  # the form only: resolved when loading
    assert ServeSettings.model_construct().device == "auto" and not ServeSettings.model_construct().random_weights
    with pytest.raises(ResnetkitError) as caught:
        ServeSettings(device="gpu")
    assert str(caught.value) == "--device 'gpu' is not a device: use auto, cpu, cuda or cuda:N."


@pytest.mark.skipif(cuda_count() > 0, reason="this machine has a GPU")
def test_a_gpu_this_machine_lacks_fails_before_the_port_opens():
    with pytest.raises(ResnetkitError, match="--device cuda: torch sees no CUDA GPU here"):
        ServerThread(ServeSettings(models=("cifar_resnet20",), port=0, device="cuda"))


def test_random_weights_serve_an_imagenet_model_offline_and_say_so():
    """No weights in the (isolated, empty) cache and no network: --random-weights serves resnet18 anyway, and the
    model list and the page say that its labels are meaningless."""
    with running(models=("resnet18",), random_weights=True, device="cpu", backend="eager", max_batch_size=2,
                 threads=1, workers=1) as srv:
        [model] = httpx.get(f"{srv.url}/v1/models").json()["models"]
        assert (model["name"], model["weights"], model["num_classes"]) == ("resnet18", "random", 1000)
        assert model["published_top1"] is None and model["runtime"] == "eager/fp32 on CPU"
        assert (model["device"], model["device_name"]) == ("cpu", "CPU")
        answer = httpx.post(f"{srv.url}/v1/models/resnet18/classify", content=jpeg_bytes()).json()
        assert len(answer["results"][0]["predictions"]) == 5
        page, script = httpx.get(f"{srv.url}/").text, httpx.get(f"{srv.url}/static/app.js").text
    assert 'id="weights-note"' in page and "its labels are meaningless" in page
    assert 'm.weights !== "random"' in script and "${m.runtime}" in script  # the note, and where the model runs


def test_on_a_gpu_every_core_decodes_and_nothing_is_measured():
    split = gpu_split("NVIDIA H200", cores=16)
    assert (split.threads, split.workers, split.rates) == (None, 16, {})
    assert split.describe() == "GPU inference on NVIDIA H200, 16 decode worker(s) on 16 cores"
    assert gpu_split("NVIDIA H200", cores=16, workers=4).workers == 4  # --workers wins


def test_gpu_memory_is_reported_on_scrape_and_only_for_gpus(monkeypatch, server):
    assert "resnetkit_gpu" not in httpx.get(f"{server}/metrics").text  # a CPU server says nothing about GPUs
    from resnetkit.serve import metrics as metrics_module

    readings = iter([{"allocated": 1024, "reserved": 4096, "peak": 2048}, {"allocated": 0, "reserved": 8192, "peak": 2048}])
    monkeypatch.setattr(metrics_module, "gpu_memory", lambda device: next(readings))
    gauges = ServeMetrics()
    gauges.watch_gpus([])
    assert b"resnetkit_gpu" not in gauges.render()[0]
    gauges.watch_gpus([Device("cuda", 0)])
    first, second = gauges.render()[0].decode(), gauges.render()[0].decode()  # read again at every scrape
    assert 'resnetkit_gpu_memory_bytes{device="cuda:0",kind="allocated"} 1024.0' in first
    assert 'resnetkit_gpu_memory_bytes{device="cuda:0",kind="reserved"} 4096.0' in first
    assert 'resnetkit_gpu_memory_bytes{device="cuda:0",kind="reserved"} 8192.0' in second


@pytest.mark.gpu
def test_on_a_gpu_the_server_runs_every_model_there_and_reports_its_memory(random_model, tmp_path):
    """Two models share cuda:0 (a runner and a batcher each); every usable core decodes."""
    name = torch.cuda.get_device_name(0)
    with running(models=("cifar_resnet20", f"mine={random_model}"), device="cuda", random_weights=True) as srv:
        listed = {m["name"]: m for m in httpx.get(f"{srv.url}/v1/models").json()["models"]}
        for model in listed.values():
            assert (model["device"], model["device_name"]) == ("cuda:0", name)
            assert model["runtime"].endswith(f" on {name} (auto)")
        assert listed["cifar_resnet20"]["weights"] == "random"
        served = served_classifier(srv, "cifar_resnet20")
        assert served.ran.threads is None  # threads do not apply on a GPU
        paths = [make_image(tmp_path / f"{i}.png", (40, 30), seed=i) for i in range(3)]
        expected = [predict_tensors(served, prepare_image(p, served.meta.preprocessing).unsqueeze(0), 3)[0]
                    for p in paths]
        files = [("file", (p.name, p.read_bytes(), "image/png")) for p in paths]
        body = httpx.post(f"{srv.url}{CLASSIFY}?top_k=3", files=files).json()
        for got, want in zip(body["results"], expected):
            assert [p["index"] for p in got["predictions"]] == [p.index for p in want]
        assert httpx.post(f"{srv.url}/v1/models/mine/classify", content=jpeg_bytes()).status_code == 200
        assert metric(srv.url, "resnetkit_gpu_memory_bytes", device="cuda:0", kind="allocated") > 0
        assert metric(srv.url, "resnetkit_gpu_memory_bytes", device="cuda:0", kind="peak") > 0
        assert metric(srv.url, "resnetkit_cpu_split", role="inference_threads") == 0
        assert metric(srv.url, "resnetkit_cpu_split", role="decode_workers") == usable_cores()
        [described] = httpx.get(f"{srv.url}/models/cifar_resnet20").json()
        assert described["workers"][0]["gpu"] is True and described["workers"][0]["gpuUsage"].startswith("gpuId::0 ")
        metadata = httpx.get(f"{srv.url}/v2/models/cifar_resnet20").json()
        assert metadata["platform"].endswith(f" on {name} (auto)")
