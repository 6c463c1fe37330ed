"""`resnetkit serve` from the command line: settings from options and RESNETKIT_* variables,
clear errors for user mistakes, and a real process that serves and exits on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
import torch

from conftest import make_image, run_cli
from resnetkit.core.artifacts import save_artifact
from resnetkit.core.device import cuda_count
from resnetkit.core.errors import ResnetkitError
from resnetkit.serve import ServeSettings
from resnetkit.core.zoo import get_spec


def test_settings_come_from_defaults_then_environment_then_options():
    env = {"RESNETKIT_MODELS": "resnet18, cifar_resnet20", "RESNETKIT_PORT": "9000", "RESNETKIT_TOKEN": "t",
           "RESNETKIT_MAX_WAIT_MS": "2.5", "RESNETKIT_ACCESS_LOG": "false"}
    settings = ServeSettings.from_env(env, port=9100, max_batch_size=None)
    assert settings.models == ("resnet18", "cifar_resnet20") and settings.port == 9100
    assert settings.token == "t" and settings.max_wait_ms == 2.5 and settings.access_log is False
    assert settings.host == "127.0.0.1" and settings.max_batch_size == 32


def test_bad_settings_explain_themselves():
    with pytest.raises(ResnetkitError, match="RESNETKIT_PORT='eighty' is not a valid int"):
        ServeSettings.from_env({"RESNETKIT_PORT": "eighty"})
    with pytest.raises(ResnetkitError, match="--max-upload-mb must be positive"):
        ServeSettings(max_upload_mb=0)
    with pytest.raises(ResnetkitError, match=r"--max-queue \(8\) must be at least --max-files \(32\)"):
        ServeSettings(max_queue=8)
    with pytest.raises(ResnetkitError, match="may only use letters"):
        ServeSettings(models=("my model=resnet18",)).entries


@pytest.mark.parametrize("args, message", [
    (["serve", "resnet5O"], "Unknown model 'resnet5O'. Did you mean: resnet50"),
    (["serve"], "Name at least one model"),
    (["serve", "resnet18", "--backend", "tpu"], "Unknown backend 'tpu'"),
    (["serve", "resnet18", "--port", "70000"], "--port must be between 0 and 65535"),
    (["serve", "resnet18", "--replicas", "2"], "--replicas, --autoscale and --gpus-per-replica apply to Ray Serve"),
    (["serve", "resnet18", "--gpus-per-replica", "0.5"], "--gpus-per-replica apply to Ray Serve: add --ray"),
    (["serve", "resnet18", "--ray", "--instances", "2"], "--instances applies to 'resnetkit serve' without --ray"),
    (["serve", "resnet18", "--instances", "0"], "Invalid value for '--instances'"),
    (["serve", "resnet18", "--device", "tpu"], "--device 'tpu' is not a device: use auto, cpu, cuda or cuda:N."),
    (["serve", "resnet18", "--device", "cpu", "--backend", "cuda-graph"], "not cpu. Use --device cuda"),
])
def test_user_mistakes_exit_2_with_a_message_and_no_traceback(monkeypatch, args, message):
    monkeypatch.delenv("RESNETKIT_MODELS", raising=False)
    result = run_cli(*args)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and message in result.stderr


@pytest.mark.gpu
def test_instances_on_a_gpu_are_one_error_line():
    result = run_cli("serve", "cifar_resnet20", "--device", "cuda", "--instances", "2", "--port", "0")
    assert result.returncode == 2 and result.stderr.startswith("error: --instances applies to serving on the CPU; "
                                                               "on cuda:0 each model runs as one instance")
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(cuda_count() > 0, reason="this machine has a GPU")
def test_a_gpu_this_machine_lacks_is_one_error_line():
    result = run_cli("serve", "cifar_resnet20", "--device", "cuda", "--port", "0")
    assert result.returncode == 2 and result.stderr.startswith("error: --device cuda: torch sees no CUDA GPU here")
    assert len(result.stderr.strip().splitlines()) == 1


def test_help_says_what_the_defaults_are():
    """serve's --backend and --precision say what cli/app.py's shared options say, plus their variable."""
    from typer.main import get_command

    from resnetkit.cli import app
    from resnetkit.cli.app import BackendOpt, PrecisionOpt

    params = {p.name: p.help for p in get_command(app).commands["serve"].params}
    for name, shared in (("backend", BackendOpt), ("precision", PrecisionOpt)):
        assert params[name].replace(f"; env RESNETKIT_{name.upper()})", ")") == shared.__metadata__[0].help
    assert "(default: auto; env RESNETKIT_DEVICE)" in params["device"]
    assert "unused on a GPU" in params["threads"] and "every usable core on a GPU" in params["workers"]


def test_a_port_in_use_is_a_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "cifar_resnet20", "--port", port)
    assert result.returncode == 2 and f"Cannot listen on 127.0.0.1:{port}" in result.stderr


def test_a_model_that_fails_to_load_ends_the_command_with_its_reason(tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    result = run_cli("serve", broken, "--port", "0")
    assert result.returncode == 2 and result.stderr.count("Could not load the models") == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: Could not load the models")


def test_a_model_whose_weights_are_nan_is_refused_by_serve_classify_and_evaluate(tmp_path):
    spec = get_spec("cifar_resnet20")
    module = spec.build().eval()
    with torch.no_grad():
        module.linear.weight.fill_(float("nan"))
    broken = save_artifact(tmp_path / "diverged.pt", module, spec.meta(random=True))
    result = run_cli("serve", broken, "--port", "0", "--backend", "eager")
    assert result.returncode == 2 and result.stderr.count("not numbers (NaN or inf)") == 1, result.stderr
    classified = run_cli("classify", broken, make_image(tmp_path / "a.png"), "--backend", "eager")
    assert classified.returncode == 2 and classified.stderr.startswith("error: cifar_resnet20 computed outputs that are "
                                                                       "not numbers (NaN or inf) for 1 of 1 images")
    assert len(classified.stderr.strip().splitlines()) == 1
    make_image(tmp_path / "labelled" / "cat" / "a.png")
    evaluated = run_cli("evaluate", broken, tmp_path / "labelled", "--backend", "eager")
    assert evaluated.returncode == 2 and "not numbers (NaN or inf)" in evaluated.stderr, evaluated.stderr


@pytest.mark.slow
def test_serve_process_answers_and_exits_cleanly_on_sigterm(tmp_path):
    spec = get_spec("cifar_resnet20")
    model = save_artifact(tmp_path / "mine.pt", spec.build().eval(), spec.meta().replace(weights="random"))
    env = {**os.environ, "RESNETKIT_TOKEN": "abc", "RESNETKIT_MODELS": f"mine={model}"}
    process = subprocess.Popen([sys.executable, "-m", "resnetkit", "serve", "--port", "0", "--threads", "1"],
                               env=env, stderr=subprocess.PIPE, text=True)
    try:
        url = _wait_for_url(process)
        _wait_ready(url)
        image = make_image(tmp_path / "x.png").read_bytes()
        assert httpx.post(f"{url}/v1/models/mine/classify", content=image).status_code == 401
        answer = httpx.post(f"{url}/v1/models/mine/classify", content=image, headers={"Authorization": "Bearer abc"})
        assert answer.status_code == 200 and answer.json()["model"] == "mine"
        process.send_signal(signal.SIGTERM)
        log = process.communicate(timeout=60)[1]
    finally:
        process.kill()
    assert "Finished server process" in log and "Traceback" not in log
    assert process.returncode == -signal.SIGTERM  # uvicorn re-raises the signal after its graceful shutdown


def _wait_for_url(process: subprocess.Popen) -> str:
    assert process.stderr is not None
    for line in process.stderr:
        if match := re.search(r"resnetkit serve on (http://\S+):", line):
            return match.group(1)
    raise AssertionError("the server exited before listening")


def _wait_ready(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while httpx.get(f"{url}/readyz").status_code != 200:
        assert time.monotonic() < deadline, "not ready in time"
        time.sleep(0.1)
