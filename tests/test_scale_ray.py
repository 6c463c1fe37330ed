"""Ray: predict --ray gives the local rows; serve --ray answers like serve and leaves nothing behind.

The serve test runs first and starts its own Ray in a subprocess (as a user would); the predict
tests share one local Ray for the module (127.0.0.1, 2 CPUs, no dashboard), stopped at the end.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from resnetkit.batch import PartStore, predict, resolve_inputs
from resnetkit.batch.engine import ModelRequest
from resnetkit.core.errors import ResnetkitError
from resnetkit.run.evaluate import evaluate
from resnetkit.scale.data import RayEngine
from resnetkit.scale.runtime import INSTALL_HINT, LOOPBACK_ONLY, ray_runtime, require_ray

psutil = pytest.importorskip("psutil")


def test_without_ray_the_error_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(ResnetkitError, match=re.escape(f"not installed here. Install it with: {INSTALL_HINT}")):
        require_ray()


@pytest.mark.slow  # importing Ray Serve takes seconds
def test_config_out_writes_a_serve_deploy_config(tmp_path: Path):
    import yaml

    pytest.importorskip("ray.serve")
    out = tmp_path / "serve.yaml"
    result = subprocess.run([sys.executable, "-m", "resnetkit", "serve", "cifar_resnet20,r32=cifar_resnet32",
                             "--autoscale", "1:3", "--max-batch-size", "16", "--config-out", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    app = yaml.safe_load(out.read_text())["applications"][0]
    assert app["import_path"] == "resnetkit.scale.serve:build_app"
    assert app["args"] == {"models": "cifar_resnet20,r32=cifar_resnet32", "max_batch_size": 16, "autoscale": "1:3"}
    from resnetkit.scale.serve import build_app

    assert build_app(app["args"]) is not None  # the builder accepts what the file holds
    for scaling, message in [({"replicas": 2, "autoscale": "1:2"}, "not both"), ({"autoscale": "3:1"}, "MIN <= MAX")]:
        with pytest.raises(ResnetkitError, match=message):
            build_app({"models": "cifar_resnet20", **scaling})
    with pytest.raises(ResnetkitError, match="Unknown model 'resnet_51'"):
        build_app({"models": "resnet_51"})


@pytest.mark.slow
def test_serve_ray_two_replicas_right_labels_junk_4xx_nothing_left_after_sigterm(cifar_weights, cifar_test_dir):
    pytest.importorskip("ray.serve")
    port = _free_port()
    env = {**os.environ, **LOOPBACK_ONLY}
    env.pop("RAY_ADDRESS", None)
    process = subprocess.Popen([sys.executable, "-m", "resnetkit", "serve", "cifar_resnet20", "--ray", "--replicas",
                                "2", "--port", str(port), "--threads", "1",
                                # eager: a fixed backend keeps replica start-up short on 2 cores (auto tunes at start)
                                "--backend", "eager"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    started: list = []
    try:
        _wait_ready(url, process)
        assert any(p.name() == "raylet" for p in psutil.Process(process.pid).children(recursive=True))
        classes = ["airplane", "cat", "ship", "truck"]
        files = [("file", (f"{c}.jpg", (cifar_test_dir / c / "0000.jpg").read_bytes())) for c in classes]
        body = httpx.post(f"{url}/v1/models/cifar_resnet20/classify", files=files, timeout=60).json()
        from resnetkit.run.classify import classify

        local = classify("cifar_resnet20", [cifar_test_dir / c / "0000.jpg" for c in classes], top_k=5)
        assert [r["predictions"][0]["label"] for r in body["results"]] == [r.predictions[0].label for r in local]
        junk = httpx.post(f"{url}/v1/models/cifar_resnet20/classify", content=b"junk", timeout=60)
        assert junk.status_code == 422 and "not an image format" in junk.json()["results"][0]["error"]
        assert httpx.post(f"{url}/v1/models/nope/classify", content=b"x", timeout=60).status_code == 404
        _kill_one_replica_under_load(url, process, (cifar_test_dir / "cat" / "0000.jpg").read_bytes())
    finally:
        started = psutil.Process(process.pid).children(recursive=True)  # Ray's processes, workers included
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    assert process.returncode == 0
    _, alive = psutil.wait_procs(started, timeout=10)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture(scope="module")
def local_ray():
    pytest.importorskip("ray")
    with ray_runtime(num_cpus=2):
        yield


@pytest.mark.slow
def test_predict_ray_and_local_give_the_same_rows_on_1000_cifar_images(local_ray, cifar_weights, cifar_test_dir,
                                                                       tmp_path: Path):
    labelled = tmp_path / "cifar1000"
    for folder in sorted(cifar_test_dir.iterdir()):
        (labelled / folder.name).mkdir(parents=True)
        for image in sorted(folder.glob("*.jpg"))[:100]:
            (labelled / folder.name / image.name).symlink_to(image)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG but no more")
    inputs = [labelled, broken, tmp_path / "gone.jpg"]
    # one fixed backend in both engines, so scores compare to 1e-4 (auto may pick differently per process)
    request = ModelRequest("cifar_resnet20", batch_size=50, backend="eager")
    local = predict(request, inputs, tmp_path / "local.parquet")
    remote = predict(request, inputs, tmp_path / "ray.parquet", engine=RayEngine(concurrency=2))
    assert (local.written, remote.written, local.errors, remote.errors) == (1002, 1002, 2, 2)

    def rows(name: str) -> list[dict]:
        return sorted(PartStore(tmp_path / name).read().to_pylist(), key=lambda r: r["source"])

    local_rows, ray_rows = rows("local.parquet"), rows("ray.parquet")
    assert [r["source"] for r in ray_rows] == [r["source"] for r in local_rows] == sorted(resolve_inputs(inputs))
    assert [(r["label"], r["index"], r["error"]) for r in ray_rows] == [(r["label"], r["index"], r["error"])
                                                                        for r in local_rows]
    assert [r["score"] for r in ray_rows if r["score"]] == pytest.approx([r["score"] for r in local_rows if r["score"]],
                                                                           abs=1e-4)
    correct = sum(r["label"] == Path(r["source"]).parent.name for r in ray_rows if r["error"] is None)
    assert 100.0 * correct / 1000 == pytest.approx(evaluate(request.load(), labelled).top1, abs=1e-9)


def _kill_one_replica_under_load(url: str, process: subprocess.Popen, image: bytes, requests: int = 40) -> None:
    """kill -9 one model replica while requests are in flight: every request is still answered 200."""
    from concurrent.futures import ThreadPoolExecutor

    replicas = [p for p in psutil.Process(process.pid).children(recursive=True)
                if "ServeReplica:resnetkit:model0" in " ".join(p.cmdline())]
    assert len(replicas) == 2

    def send(_: int) -> int:
        return httpx.post(f"{url}/v1/models/cifar_resnet20/classify", content=image, timeout=120).status_code

    with ThreadPoolExecutor(8) as pool:
        answers = pool.map(send, range(requests))
        time.sleep(0.5)
        replicas[0].kill()
        assert list(answers) == [200] * requests


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(url: str, process: subprocess.Popen, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "serve --ray exited early"
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"serve --ray was not ready within {timeout:.0f} s")
