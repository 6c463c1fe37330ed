"""Ray: predict --ray gives the local rows; serve --ray answers like serve and leaves nothing behind.

The serve test runs first and starts its own Ray in a subprocess (as a user would); the predict
tests share one local Ray for the module (127.0.0.1, 2 CPUs, no dashboard), stopped at the end.
"""

from __future__ import annotations

import dataclasses
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
from resnetkit.scale.runtime import INSTALL_HINT, LOOPBACK_ONLY, hide_unassigned_gpus, ray_runtime, require_ray
from conftest import run_cli

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


def test_gpus_per_replica_reach_the_replicas_options_and_are_checked_against_the_device():
    pytest.importorskip("ray.serve")
    from resnetkit.scale.serve import Scaling
    from resnetkit.serve import ServeSettings

    def options(scaling: Scaling, **settings) -> dict:
        return scaling.replica_options(ServeSettings(models=("cifar_resnet20",), **settings))

    assert "ray_actor_options" not in options(Scaling())  # auto: the driver may have no GPU; ask to get one
    assert options(Scaling(), threads=4)["ray_actor_options"] == {"num_cpus": 4}  # Ray places it on 4 free CPUs
    assert options(Scaling(), device="cuda")["ray_actor_options"] == {"num_gpus": 1.0}
    four = options(Scaling(replicas=4, gpus_per_replica=0.25))
    assert four["ray_actor_options"] == {"num_gpus": 0.25} and four["num_replicas"] == 4
    autoscaled = options(Scaling(autoscale="1:3", gpus_per_replica=0.5), max_batch_size=16)
    assert autoscaled["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 16}
    for scaling, device, message in [
        (Scaling(gpus_per_replica=0), "cuda", "Ray shows an actor only the GPUs it asks for"),
        (Scaling(gpus_per_replica=1), "cpu", "would hold GPUs that no actor uses"),
        (Scaling(), "cuda:1", "numbered from cuda:0; use --device cuda"),
        (Scaling(replicas=2, autoscale="1:2"), "auto", "not both"),
    ]:
        with pytest.raises(ResnetkitError, match=message):
            options(scaling, device=device)


def test_replicas_that_ask_for_more_cpus_than_ray_has_are_refused_before_ray_serve_waits_for_them():
    pytest.importorskip("ray.serve")
    from resnetkit.scale.serve import Scaling
    from resnetkit.serve import ServeSettings

    def check(scaling: Scaling, threads: int | None, nodes: list[float], models: tuple = ("cifar_resnet20",)) -> None:
        scaling.check_cpus(ServeSettings(models=models, threads=threads), nodes)

    check(Scaling(replicas=2), 1, [2.0])  # fits
    check(Scaling(replicas=8), None, [2.0])  # without --threads each asks Ray's default (1) and waits its turn
    check(Scaling(autoscale="1:8"), 2, [2.0])  # only the minimum must start
    for scaling, threads, nodes, models, needed in [
        (Scaling(replicas=2), 2, [2.0], ("cifar_resnet20",), "2 replica(s) need 4, and this Ray has 2"),
        (Scaling(), 4, [2.0, 2.0], ("cifar_resnet20",), "1 replica(s) need 4, and this Ray has 4 (2 on its largest"),
        (Scaling(autoscale="2:4"), 1, [1.0], ("cifar_resnet20", "cifar_resnet32"), "4 replica(s) need 4"),
    ]:
        with pytest.raises(ResnetkitError, match=re.escape(needed)):
            check(scaling, threads, nodes, models)


def test_config_out_carries_the_device_and_the_gpus_to_the_cluster(tmp_path: Path):
    """The YAML holds the arguments; the builder turns them into the replicas' Ray actor options (on a driver
    without a GPU: the device is resolved by each replica)."""
    import yaml

    pytest.importorskip("ray.serve")
    from resnetkit.scale.serve import build_app

    out = tmp_path / "serve.yaml"
    result = run_cli("serve", "cifar_resnet20", "--ray", "--replicas", "4", "--device", "cuda", "--gpus-per-replica",
                     "0.25", "--random-weights", "--config-out", out)
    assert result.returncode == 0, result.stderr
    args = yaml.safe_load(out.read_text())["applications"][0]["args"]
    assert args == {"models": "cifar_resnet20", "device": "cuda", "random_weights": True, "replicas": 4,
                    "gpus_per_replica": 0.25}
    [replica] = build_app(args)._bound_deployment.init_args[1]  # the ingress is bound to the model deployments
    quiet = build_app({**args, "access_log": False})._bound_deployment  # --no-access-log reaches every deployment
    assert [d.logging_config["enable_access_log"] for d in (quiet, *(r._bound_deployment for r in quiet.init_args[1]))] \
        == [False, False]
    assert replica._bound_deployment.ray_actor_options["num_gpus"] == 0.25
    assert replica._bound_deployment.num_replicas == 4
    refused = run_cli("serve", "cifar_resnet20", "--ray", "--device", "cuda", "--gpus-per-replica", "0",
                      "--config-out", tmp_path / "no.yaml")
    assert refused.returncode == 2 and "Ray shows an actor only the GPUs it asks for" in refused.stderr
    assert not (tmp_path / "no.yaml").exists()


def test_gpus_per_actor_reach_map_batches():
    pytest.importorskip("ray.data")
    from resnetkit.scale.data import map_batches_options

    request = ModelRequest("cifar_resnet20", batch_size=16)
    options = map_batches_options(request, top_k=3, workers=2, concurrency=4, gpus_per_actor=0.5)
    assert options["num_gpus"] == 0.5 and options["num_cpus"] == 1 and options["compute"].max_size == 4
    assert options["fn_constructor_kwargs"] == {"request": request, "top_k": 3, "workers": 2}
    assert "num_gpus" not in map_batches_options(request, top_k=3, workers=2, concurrency=4)
    assert map_batches_options(dataclasses.replace(request, threads=4), top_k=3, workers=2,
                               concurrency=4)["num_cpus"] == 4  # --threads: the CPUs each actor asks for
    def described(engine: RayEngine, device: str = "auto") -> str:  # lazy: describing starts no Ray
        return engine(ModelRequest("cifar_resnet20", device=device), [], 3, 2)[1]

    assert described(RayEngine(concurrency=4, gpus_per_actor=0.5)) == "Ray Data, 4 actors, 0.5 GPU each"
    assert described(RayEngine(concurrency=2), "cuda") == "Ray Data, 2 actors, 1 GPU each"  # as asked by --device
    assert described(RayEngine(concurrency=2)) == "Ray Data, 2 actors"  # auto: the driver may have no GPU
    for gpus, device, message in [(0, "cuda", "--device cuda with --gpus-per-actor 0: Ray shows an actor only"),
                                  (1, "cpu", "--gpus-per-actor 1 with --device cpu would hold GPUs"),
                                  (None, "gpu", "--device 'gpu' is not a device")]:
        with pytest.raises(ResnetkitError, match=message):
            described(RayEngine(gpus_per_actor=gpus), device)


def test_actors_larger_than_any_node_and_addresses_where_nothing_listens_are_refused_at_once():
    import socket

    from resnetkit.scale.data import check_actor_cpus
    from resnetkit.scale.runtime import _check_reachable

    check_actor_cpus(2, [2.0, 1.0])
    with pytest.raises(ResnetkitError, match="--threads 4 makes each model actor ask Ray for 4 CPUs, and the largest "
                                             "node of this Ray has 2"):
        check_actor_cpus(4, [2.0, 1.0])
    with socket.socket() as taken:  # a port that was free a moment ago: nothing listens there
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(ResnetkitError, match=f"Could not join the Ray cluster at 127.0.0.1:{port}: nothing answers"):
        _check_reachable(f"127.0.0.1:{port}")
    assert time.monotonic() - started < 6
    _check_reachable("auto")  # Ray resolves that one itself


def test_gpus_per_actor_without_ray_is_a_clear_error(tmp_path: Path):
    result = run_cli("predict", "cifar_resnet20", tmp_path, "-o", tmp_path / "out.parquet", "--gpus-per-actor", "1")
    assert result.returncode == 2 and "--gpus-per-actor asks Ray for GPUs: add --ray" in result.stderr


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


def _device_probe(num_gpus: float):
    """A Ray task asking for ``num_gpus`` that answers what ``--device auto`` resolves to there, after the first step
    of resnetkit's actors (defined in here, so that Ray ships it by value: workers cannot import test modules)."""
    import ray

    def device_in_actor() -> str:
        from resnetkit.core.device import resolve_device

        hide_unassigned_gpus()
        return str(resolve_device("auto"))

    return ray.remote(num_gpus=num_gpus)(device_in_actor)


def _threads_probe():
    """A Ray task with Ray's default reservation (1 CPU) that builds a predict actor's model and answers its threads."""
    import ray

    def threads_in_actor(request: ModelRequest) -> int | None:
        from resnetkit.scale.data import Predictor

        return Predictor(request, top_k=1, workers=1).classifier.ran.threads

    return ray.remote(threads_in_actor)


@pytest.mark.slow
def test_a_predict_actor_runs_its_model_on_the_cpus_ray_reserved_for_it(local_ray):
    """An actor per core (--concurrency) whose runtime took every core would put cores x cores threads on a node."""
    import ray

    request = ModelRequest("cifar_resnet20", random_weights=True, backend="openvino")
    assert ray.get(_threads_probe().remote(request)) == 1
    assert ray.get(_threads_probe().remote(dataclasses.replace(request, threads=2))) == 2


@pytest.mark.slow
def test_a_ray_task_that_asks_for_no_gpu_runs_on_the_cpu(local_ray):
    import ray

    assert ray.get(_device_probe(0).remote()) == "cpu"


@pytest.mark.gpu
def test_ray_actors_that_ask_for_a_gpu_load_the_model_there(local_ray, cifar_weights, cifar_test_dir, tmp_path: Path):
    import ray

    assert ray.get(_device_probe(0.5).remote()) == "cuda:0"
    assert ray.get(_device_probe(0).remote()) == "cpu"  # Ray (2.58, 2.60) would have shown it the node's GPUs
    images = [path for folder in sorted(cifar_test_dir.iterdir()) for path in sorted(folder.glob("*.jpg"))[:20]]
    request = ModelRequest("cifar_resnet20", batch_size=50, backend="eager")  # fp16 on the GPU in both engines
    local = predict(request, images, tmp_path / "local.parquet")
    remote = predict(request, images, tmp_path / "ray.parquet", engine=RayEngine(concurrency=2, gpus_per_actor=0.5))
    assert remote.engine == "Ray Data, 2 actors, 0.5 GPU each" and remote.written == local.written == 200

    def labels(name: str) -> list[tuple[str, str]]:
        return sorted((r["source"], r["label"]) for r in PartStore(tmp_path / name).read().to_pylist())

    assert labels("ray.parquet") == labels("local.parquet")


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
