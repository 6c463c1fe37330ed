"""Download, verify, cache and load weights, against a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import os
import pickle
import threading
import time

import pytest
import torch

from resnetkit import load_model

from resnetkit.core import weights
from resnetkit.core.errors import WeightsError
from resnetkit.core.zoo import get_spec

from conftest import CIFAR_WEIGHTS, make_image, require, run_cli

PAYLOAD = {}  # file name -> bytes, served by the fixture's server


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server API)
        mode, _, name = self.path.strip("/").partition("/")
        body = PAYLOAD.get(name)
        if body is None or mode == "missing":
            self.send_error(404, "Not Found")
            return
        if mode == "slow":
            time.sleep(2)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "bad":
            body = b"x" * len(body)
        if mode == "trunc":
            body = body[: len(body) // 2]
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def _published_checkpoint(name="fake20-00000000.th"):
    """A real CIFAR ResNet-20 state dict in akamaster's wrapping, and a spec whose hash matches it."""
    buffer = io.BytesIO()
    state = {f"module.{k}": v for k, v in get_spec("cifar_resnet20").build().state_dict().items()}
    torch.save({"state_dict": state, "best_prec1": 12.5}, buffer)
    data = buffer.getvalue()
    PAYLOAD[name] = data
    spec = dataclasses.replace(get_spec("cifar_resnet20").default_weights, sha256=hashlib.sha256(data).hexdigest(),
                               url=f"https://example.invalid/models/{name}")
    return data, spec


def test_download_verifies_and_caches(server, cache, monkeypatch):
    data, spec = _published_checkpoint()
    monkeypatch.setenv(weights.MIRROR_ENV, f"{server}/good")
    path = weights.download("cifar_resnet20", spec, progress=False)
    assert path == cache / spec.file_name and path.read_bytes() == data
    state = weights.load_published("cifar_resnet20", spec)
    assert "conv1.weight" in state and not any(k.startswith("module.") for k in state)
    assert list(cache.iterdir()) == [path]  # no temp files left behind


@pytest.mark.parametrize("mode, message", [
    ("bad", "has SHA-256"),
    ("trunc", "stopped after"),
    ("missing", "HTTP 404"),
])
def test_bad_downloads_are_refused_and_nothing_is_cached(server, cache, monkeypatch, mode, message):
    _, spec = _published_checkpoint()
    monkeypatch.setenv(weights.MIRROR_ENV, f"{server}/{mode}")
    with pytest.raises(WeightsError, match=message) as info:
        weights.download("cifar_resnet20", spec, progress=False)
    text = str(info.value)
    if mode == "missing":
        assert f"{server}/missing/{spec.file_name}" in text and str(cache / spec.file_name) in text
        assert "resnetkit weights import cifar_resnet20 FILE" in text
    assert not cache.exists() or list(cache.iterdir()) == []


def test_slow_server_times_out_with_the_url_in_the_message(server, cache, monkeypatch):
    _, spec = _published_checkpoint()
    monkeypatch.setenv(weights.MIRROR_ENV, f"{server}/slow")
    with pytest.raises(WeightsError, match="timed out") as info:
        weights.download("cifar_resnet20", spec, progress=False, timeout=0.5)
    assert f"{server}/slow/{spec.file_name}" in str(info.value)
    assert not cache.exists() or list(cache.iterdir()) == []


def test_offline_and_offline_env_give_the_fix(cache, monkeypatch):
    _, spec = _published_checkpoint()
    monkeypatch.setenv(weights.MIRROR_ENV, "http://127.0.0.1:9")  # discard port: connection refused
    with pytest.raises(WeightsError, match="Are you offline"):
        weights.download("cifar_resnet20", spec, progress=False)
    monkeypatch.setenv(weights.OFFLINE_ENV, "1")
    with pytest.raises(WeightsError, match="RESNETKIT_OFFLINE=1 forbids"):
        weights.download("cifar_resnet20", spec, progress=False)


def test_import_checks_the_hash(tmp_path, cache):
    data, spec = _published_checkpoint()
    good = tmp_path / "good.th"
    good.write_bytes(data)
    bad = tmp_path / "bad.th"
    bad.write_bytes(data[:-10])
    with pytest.raises(WeightsError, match="has SHA-256"):
        weights.import_file("cifar_resnet20", spec, bad)
    assert not (cache / spec.file_name).exists()
    assert weights.import_file("cifar_resnet20", spec, good).read_bytes() == data
    with pytest.raises(WeightsError, match="No such file"):
        weights.import_file("cifar_resnet20", spec, tmp_path / "nope.th")


def test_unwritable_cache_folder_is_named_before_any_download(tmp_path, monkeypatch):
    data, spec = _published_checkpoint()
    (tmp_path / "home").write_text("a file, not a folder")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(weights.MIRROR_ENV, "http://127.0.0.1:9")  # unreachable: the cache must be blamed first
    good = tmp_path / "good.th"
    good.write_bytes(data)
    for attempt in (lambda: weights.download("cifar_resnet20", spec, progress=False),
                    lambda: weights.import_file("cifar_resnet20", spec, good)):
        with pytest.raises(WeightsError, match="weights cache folder .* cannot be written") as info:
            attempt()
        assert str(weights.cache_dir()) in str(info.value) and f"TORCH_HOME={tmp_path / 'home'}" in str(info.value)


def test_truncated_cached_file_says_so_and_how_to_replace_it(tmp_path, cache):
    data, spec = _published_checkpoint()
    cache.mkdir(parents=True)
    (cache / spec.file_name).write_bytes(data[:5000])
    assert not weights.is_intact(spec)
    with pytest.raises(WeightsError, match="truncated or corrupt") as info:
        weights.load_published("cifar_resnet20", spec)
    assert "Run 'resnetkit weights pull cifar_resnet20'" in str(info.value)
    (tmp_path / "copy.th").write_bytes(data[:5000])  # any other file that ends early
    with pytest.raises(WeightsError, match="ends early.*truncated"):
        weights.safe_load(tmp_path / "copy.th")


def test_cli_pull_replaces_a_truncated_cached_file(server, tmp_path):
    real = require(CIFAR_WEIGHTS) / "resnet20-12fca82f.th"
    PAYLOAD[real.name] = real.read_bytes()
    env = {"TORCH_HOME": str(tmp_path / "th"), weights.MIRROR_ENV: f"{server}/good"}
    cached = tmp_path / "th" / "hub" / "checkpoints" / real.name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(real.read_bytes()[:5000])  # a legacy pickle: loading it ends in EOFError
    assert '"intact": false' in run_cli("weights", "list", "--json", env=env).stdout
    refused = run_cli("classify", "cifar_resnet20", make_image(tmp_path / "cat.png"), env=env)
    assert refused.returncode == 2 and "truncated or corrupt" in refused.stderr
    assert "resnetkit weights pull cifar_resnet20" in refused.stderr.replace("\n", "")
    pulled = run_cli("weights", "pull", "cifar_resnet20", env=env)
    assert pulled.returncode == 0 and "downloaded and verified" in pulled.stdout
    assert cached.read_bytes() == real.read_bytes()
    assert "already cached and verified" in run_cli("weights", "pull", "cifar_resnet20", env=env).stdout
    assert '"intact": true' in run_cli("weights", "list", "--json", env=env).stdout


class _Evil:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickles_that_run_code_are_refused(tmp_path):
    path, marker = tmp_path / "evil.pth", tmp_path / "pwned"
    with open(path, "wb") as handle:
        pickle.dump({"state_dict": _Evil(str(marker))}, handle)
    with pytest.raises(WeightsError, match="weights_only=True"):
        weights.safe_load(path)
    with pytest.raises(WeightsError, match="Refused to load"):
        load_model("cifar_resnet20", weights=str(path))
    assert not marker.exists()  # the payload never ran


def test_weights_file_override_and_mismatch(tmp_path):
    model = get_spec("cifar_resnet20").build()
    path = tmp_path / "mine.pth"
    torch.save(model.state_dict(), path)
    loaded = load_model("cifar_resnet20", weights=str(path))
    assert torch.equal(loaded.module.conv1.weight, model.conv1.weight) and loaded.meta.weights == str(path)
    with pytest.raises(WeightsError, match="does not fit cifar_resnet32"):
        load_model("cifar_resnet32", weights=str(path))
    with pytest.raises(WeightsError, match="neither a weights tag"):
        load_model("cifar_resnet20", weights="IMAGENET9K")


def test_cli_pull_list_import_with_real_checkpoint(server, tmp_path):
    real = require(CIFAR_WEIGHTS) / "resnet20-12fca82f.th"
    PAYLOAD[real.name] = real.read_bytes()
    env = {"TORCH_HOME": str(tmp_path / "th"), weights.MIRROR_ENV: f"{server}/good"}
    pulled = run_cli("weights", "pull", "cifar_resnet20", env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert "downloaded and verified" in pulled.stdout
    listed = run_cli("weights", "list", "--json", env=env)
    assert '"model": "cifar_resnet20"' in listed.stdout
    env["TORCH_HOME"] = str(tmp_path / "th2")
    wrong = run_cli("weights", "import", "cifar_resnet32", str(real), env=env)
    assert wrong.returncode != 0 and "has SHA-256" in wrong.stderr and "Traceback" not in wrong.stderr
    assert not (tmp_path / "th2" / "hub" / "checkpoints" / "resnet32-d509ac18.th").exists()


def test_cli_offline_classify_is_one_paragraph_without_traceback(tmp_path):
    image = make_image(tmp_path / "some.jpg")
    result = run_cli("classify", "resnet18", str(image),
                  env={"TORCH_HOME": str(tmp_path / "empty"), weights.MIRROR_ENV: "http://127.0.0.1:9"})
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and result.stdout == ""
    message = result.stderr.strip()
    assert "\n\n" not in message and "resnetkit weights pull resnet18" in message
    assert str(tmp_path / "empty" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message.replace("\n", "")
