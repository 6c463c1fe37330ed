"""Training engine on small generated datasets: coloured discs on noise, learned in seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from resnetkit import load_model
from resnetkit.train import TrainConfig, finetune_module, run

COLOURS = {"blue": (30, 30, 220), "green": (30, 200, 30), "red": (220, 30, 30)}


def make_shapes(root: Path, per_class: int, seed: int = 0, classes: dict = COLOURS) -> Path:
    """``root/<colour>/<i>.png``: a disc of that colour at a random place on dark noise, 32x32."""
    rng = np.random.default_rng(seed)
    for name, colour in classes.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = Image.fromarray(rng.integers(0, 80, (32, 32, 3), dtype=np.uint8))
            x, y = (int(v) for v in rng.integers(2, 16, 2))
            size = int(rng.integers(8, 14))
            ImageDraw.Draw(image).ellipse([x, y, x + size, y + size], fill=colour)
            image.save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``train/`` (24 per class) and ``val/`` (8 per class) of three colours."""
    root = tmp_path_factory.mktemp("shapes")
    make_shapes(root / "train", 24, seed=0)
    make_shapes(root / "val", 8, seed=1)
    return root


def scratch(data: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(task="train", model="cifar_resnet20", data_dir=str(data), out_dir=str(out), epochs=3, lr=0.05,
                    batch_size=16, pretrained=False)
    return TrainConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def trained_run(shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("runs") / "shapes"
    return out, run(scratch(shapes, out), progress_bar=False)


def test_training_learns_and_writes_a_run_folder(trained_run: tuple[Path, dict]) -> None:
    out, summary = trained_run
    history = summary_epochs = summary["epochs_run"]
    assert summary_epochs == 3
    first, last = (summary["best"], summary["final"])
    assert last["train_loss"] < 1.0 and summary["best"]["val_top1"] > 60  # chance is 33 %
    for name in ("best.pt", "last.pt", "metrics.csv", "metrics.json", "curves.png", "config.json"):
        assert (out / name).is_file(), name
    assert history and first


def test_checkpoint_is_a_model_reference(trained_run: tuple[Path, dict], shapes: Path) -> None:
    out, _ = trained_run
    classifier = load_model(out / "best.pt")
    assert classifier.meta.categories == ("blue", "green", "red")
    assert classifier.meta.extra["train"]["model"] == "cifar_resnet20"
    image = classifier.transform(Image.open(shapes / "val" / "red" / "0.png").convert("RGB"))
    assert classifier.probabilities(image[None]).argmax().item() == 2


def test_finetune_module_trains_in_place(trained_run: tuple[Path, dict], shapes: Path) -> None:
    out, _ = trained_run
    classifier = load_model(out / "best.pt")
    before = {k: v.clone() for k, v in classifier.module.state_dict().items()}
    metrics = finetune_module(classifier.module, classifier.meta, shapes / "train", epochs=1, lr=0.01,
                              batch_size=32, val_dir=shapes / "val")
    assert set(metrics) >= {"train_loss", "val_top1"} and metrics["val_top1"] > 60
    after = classifier.module.state_dict()
    assert any(not torch_equal(before[k], after[k]) for k in before)
    assert not classifier.module.training


def torch_equal(a, b) -> bool:
    return bool((a == b).all())
