"""Shared fixtures: an isolated weights cache, the ../shared data, small generated images, the CLI
run in this process, and short latency measurements."""

from __future__ import annotations

import io
import os
import signal
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED = Path(os.environ.get("RESNETKIT_SHARED") or Path(__file__).resolve().parents[1].parent / "shared")
CIFAR_WEIGHTS = SHARED / "weights" / "cifar10"
CIFAR_TEST = SHARED / "data" / "cifar10" / "test"
CIFAR_TRAIN = SHARED / "data" / "cifar10" / "train"
HYMENOPTERA = SHARED / "data" / "hymenoptera"


@pytest.fixture(autouse=True, scope="session")
def isolated_torch_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Never read or write the user's torch hub cache during tests."""
    home = tmp_path_factory.mktemp("torch_home")
    old = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(home)
    os.environ.pop("RESNETKIT_WEIGHTS_MIRROR", None)
    yield home
    if old is None:
        os.environ.pop("TORCH_HOME", None)
    else:
        os.environ["TORCH_HOME"] = old


@pytest.fixture(autouse=True, scope="session")
def isolated_tuning_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """auto's tuning cache lives in a session temp file, never in the user's cache directory. scripts/test.sh names
    one file for all its module processes (RESNETKIT_SUITE_TUNING_CACHE), as a user's machine keeps one: each model
    is then tuned once per run, not once per module (about 15 s each here). Tests of tuning itself use an empty one."""
    suite_cache = os.environ.get("RESNETKIT_SUITE_TUNING_CACHE")
    path = Path(suite_cache) if suite_cache else tmp_path_factory.mktemp("tuning") / "tuning.json"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RESNETKIT_TUNING_CACHE", str(path))
        yield path


@pytest.fixture(autouse=True)
def seeded_torch() -> None:
    """Random weights and inputs are the same in every test, whatever ran before it."""
    import torch

    torch.manual_seed(0)


def pytest_sessionstart(session: pytest.Session) -> None:
    """In CI (CI=true) the real data must be there: stop with one message instead of skipping its tests.

    Ctrl-C raises KeyboardInterrupt in the test process and in the processes it starts even when the
    suite was started with SIGINT ignored (a background job of a non-interactive shell inherits that,
    and Python then keeps it ignored): the Ctrl-C tests send SIGINT and expect it handled."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if os.environ.get("CI") == "true" and not SHARED.is_dir():
        pytest.exit(f"error: {SHARED} is missing; CI runs the tests on the real weights and data in ../shared "
                    "(or set RESNETKIT_SHARED to their folder).", returncode=1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` skip, saying why, where torch sees no CUDA GPU (CI never has one)."""
    from resnetkit.core.device import cuda_count

    if cuda_count():
        return
    import torch

    why = "CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda} build, no GPU or driver found"
    skip = pytest.mark.skip(reason=f"needs a CUDA GPU; torch {torch.__version__} sees none here ({why})")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is missing (../shared holds real weights and data for developers and CI only)")
    return path


@pytest.fixture(autouse=True)
def fast_latency(monkeypatch: pytest.MonkeyPatch) -> None:
    """Latency measured inside tests is a check that timing works, not a benchmark: 0.05 s per measurement."""
    from resnetkit.backends import auto
    from resnetkit.shrink import compare

    monkeypatch.setattr(compare, "LATENCY_SECONDS", 0.05)
    monkeypatch.setattr(auto, "TRIAL_SECONDS", 0.05)


def run_cli(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``resnetkit ARGS...`` in this process through Typer's test runner: exit code, stdout and stderr
    apart (``env`` is set for the call). An exception the CLI does not handle fails the test."""
    from typer.testing import CliRunner

    from resnetkit.cli import app

    argv = [str(a) for a in args]
    result = CliRunner().invoke(app, argv, env=env, catch_exceptions=False)
    return subprocess.CompletedProcess(["resnetkit", *argv], result.exit_code, result.stdout, result.stderr)


@pytest.fixture(scope="session")
def cifar_weights(isolated_torch_home: Path) -> Path:
    """Import the real CIFAR-10 ResNet-20/32 checkpoints from ../shared into the test cache."""
    from resnetkit.core import weights
    from resnetkit.core.zoo import get_spec

    require(CIFAR_WEIGHTS)
    for model, file in [("cifar_resnet20", "resnet20-12fca82f.th"), ("cifar_resnet32", "resnet32-d509ac18.th")]:
        spec = get_spec(model)
        if not weights.cached_path(spec.default_weights).is_file():
            weights.import_file(model, spec.default_weights, CIFAR_WEIGHTS / file)
    return CIFAR_WEIGHTS


@pytest.fixture(scope="session")
def cifar_test_dir() -> Path:
    return require(CIFAR_TEST)


@pytest.fixture(scope="session")
def hymenoptera_dir() -> Path:
    return require(HYMENOPTERA)


def make_image(path: Path, size: tuple[int, int] = (64, 48), mode: str = "RGB", seed: int = 0, **save_args) -> Path:
    """Write a random-noise image of ``size`` and ``mode`` to ``path`` (format from the suffix)."""
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    image = rgb if mode == "RGB" else rgb.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **save_args)
    return path


def png_header_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's shape)."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    chunk = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = chunk
    data[29:33] = struct.pack(">I", zlib.crc32(chunk))
    return bytes(data)


def damaged_dds() -> bytes:
    """A DDS file whose header names a pixel format that does not exist (from a fuzzed upload)."""
    header = struct.pack("<7I", 124, 0x100F, 40, 48, 0x90, 0, 0) + bytes(44) + struct.pack("<2I", 32, 0xFF00)
    return b"DDS " + header + bytes(44) + bytes(6000)


def eager_source(model: str, **kwargs):
    """``model`` loaded the way the CLI loads the input of export/quantize/prune: eager PyTorch, exact fp32."""
    from resnetkit import load_model
    from resnetkit.backends.base import RunnerOptions

    return load_model(model, backend="eager", options=RunnerOptions(precision="fp32"), **kwargs)
