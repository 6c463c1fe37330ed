"""Shared fixtures: an isolated weights cache, the ../shared data, small generated images."""

from __future__ import annotations

import os
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


@pytest.fixture(autouse=True)
def seeded_torch() -> None:
    """Random weights and inputs are the same in every test, whatever ran before it."""
    import torch

    torch.manual_seed(0)


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is missing (../shared holds real weights and data for developers and CI only)")
    return path


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
