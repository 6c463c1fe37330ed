"""Training engine on small generated datasets: coloured discs on noise, learned in seconds."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image, ImageDraw

from resnetkit import load_model
from resnetkit.cli import app
from resnetkit.core.device import CPU, Device, cuda_count, resolve_device
from resnetkit.core.errors import DatasetError
from resnetkit.core.weights import safe_load
from resnetkit.core.zoo import get_spec
from resnetkit.train import TrainConfig, TrainingError, TrainingInterrupted, finetune_module, resume, run
from resnetkit.train import hardware
from resnetkit.train.config import FROM_RANDOM, FROM_WEIGHTS
from resnetkit.train.data import Normalize, ShardedSampler, eval_transform, load_splits, make_loader, rare_format_files
from resnetkit.train.distill import distill_with_baseline
from resnetkit.train.engine import out_of_memory_advice
from resnetkit.train.objectives import CrossEntropyObjective, DistillationObjective
from resnetkit.train.optim import lr_factor
from resnetkit.train.reporting import format_row

from conftest import CIFAR_TRAIN, require, run_cli

COLOURS = {"blue": (30, 30, 220), "green": (30, 200, 30), "red": (220, 30, 30)}
RESNETKIT = str(Path(sys.executable).with_name("resnetkit"))


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
    """cifar_resnet20 from random weights, 3 epochs of 5 batches, on the CPU (also where there is a GPU)."""
    settings = dict(task="train", model="cifar_resnet20", data_dir=str(data), out_dir=str(out), epochs=3, lr=0.05,
                    batch_size=16, pretrained=False, device="cpu")
    return TrainConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def trained_run(shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("runs") / "shapes"
    return out, run(scratch(shapes, out), progress_bar=False)


def epoch_metrics(summary_or_dir: dict | Path) -> list[dict]:
    """The per-epoch numbers that must not depend on timing."""
    if isinstance(summary_or_dir, Path):
        rows = json.loads((summary_or_dir / "metrics.json").read_text())["epochs"]
    else:
        rows = [summary_or_dir["final"]]
    keys = ("epoch", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "images", "skipped")
    return [{k: row[k] for k in keys} for row in rows]


# --- learning and artifacts -------------------------------------------------------------

def test_training_learns_and_writes_a_run_folder(trained_run: tuple[Path, dict]) -> None:
    out, summary = trained_run
    rows = epoch_metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2, 3] and summary["epochs_run"] == 3
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert summary["best"]["val_top1"] > 60  # chance is 33 %
    for name in ("best.pt", "last.pt", "metrics.csv", "metrics.json", "curves.png", "config.json"):
        assert (out / name).is_file(), name
    assert (out / "metrics.csv").read_text().splitlines()[0].startswith("epoch,lr,train_loss")
    assert (out / "metrics.csv").read_text().splitlines()[0].endswith(",images_per_s,data_wait")


def test_epochs_report_the_share_of_time_waiting_for_data(trained_run: tuple[Path, dict]) -> None:
    out, summary = trained_run
    history = json.loads((out / "metrics.json").read_text())["epochs"]
    assert all(0 <= row["data_wait"] <= 1 for row in history) and summary["final"] == history[-1]
    line = format_row(history[0], 3)
    assert line.endswith(f"| {100 * history[0]['data_wait']:.0f}% of the time waiting for data")
    assert format_row({k: v for k, v in history[0].items() if k != "data_wait"}, 3).endswith("img/s")  # older runs


def test_cpu_runs_use_data_workers_and_keep_fp32(trained_run: tuple[Path, dict]) -> None:
    assert trained_run[1]["hardware"] == {
        "device": "cpu", "device_name": "CPU", "precision": "fp32", "channels_last": False,
        "workers": hardware.default_workers(), "pin_memory": False, "prefetch_factor": 2, "compile": False}


@pytest.mark.slow
def test_checkpoint_is_a_model_reference(trained_run: tuple[Path, dict], shapes: Path) -> None:
    out, summary = trained_run
    classifier = load_model(out / "best.pt", backend="eager")  # the module as trained, exactly
    assert classifier.meta.categories == ("blue", "green", "red")
    assert classifier.meta.extra["train"]["model"] == "cifar_resnet20"
    assert classifier.meta.extra["metrics"]["epoch"] == summary["best_epoch"]
    images = torch.stack([classifier.transform(Image.open(shapes / "val" / c / f"{i}.png").convert("RGB"))
                          for c in COLOURS for i in range(8)])
    predicted = classifier.probabilities(images).argmax(1)
    accuracy = (predicted == torch.arange(3).repeat_interleave(8)).float().mean().item() * 100
    assert accuracy == pytest.approx(summary["best"]["val_top1"], abs=0.01)


def test_finetune_module_trains_in_place(trained_run: tuple[Path, dict], shapes: Path) -> None:
    out, _ = trained_run
    classifier = load_model(out / "best.pt")
    before = {k: v.clone() for k, v in classifier.module.state_dict().items()}
    metrics = finetune_module(classifier.module, classifier.meta, shapes / "train", epochs=1, lr=0.01,
                              batch_size=32, val_dir=shapes / "val")
    assert {"train_loss", "val_top1"} <= set(metrics) and metrics["val_top1"] > 60
    after = classifier.module.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before if k.endswith("conv1.weight"))
    assert not classifier.module.training


@pytest.mark.parametrize("mode, frozen, trained", [("head", "layer3.0.conv1.weight", "linear.weight"),
                                                   ("last-stage", "layer2.0.conv1.weight", "layer3.0.conv1.weight")])
def test_finetune_modes_replace_head_and_freeze(trained_run: tuple[Path, dict], tmp_path: Path, mode: str,
                                                frozen: str, trained: str) -> None:
    data = make_shapes(tmp_path / "two", 10, classes={"cyan": (0, 220, 220), "yellow": (220, 220, 0)})
    start = load_model(trained_run[0] / "best.pt").module.state_dict()
    run(TrainConfig(task="finetune", model=str(trained_run[0] / "best.pt"), data_dir=str(data), out_dir=str(tmp_path / "ft"),
                    mode=mode, epochs=1, batch_size=8, val_split=0.2), progress_bar=False)
    tuned = load_model(tmp_path / "ft" / "best.pt")
    state = tuned.module.state_dict()
    assert tuned.meta.categories == ("cyan", "yellow") and state["linear.weight"].shape == (2, 64)
    assert tuned.meta.extra["train"]["head_lr"] == pytest.approx(10 * tuned.meta.extra["train"]["lr"])  # new head
    assert torch.equal(state[frozen], start[frozen])
    assert torch.equal(state["bn1.running_mean"], start["bn1.running_mean"])  # frozen norms keep their statistics
    if trained != "linear.weight":
        assert not torch.equal(state[trained], start[trained])


@pytest.mark.slow
def test_mixed_precision_accumulation_clipping_onecycle(shapes: Path, tmp_path: Path) -> None:
    summary = run(scratch(shapes, tmp_path / "amp", epochs=2, amp=True, accum_steps=2, clip_grad=1.0,
                          channels_last=True, schedule="onecycle", batch_size=8), progress_bar=False)
    rows = epoch_metrics(tmp_path / "amp")
    assert all(np.isfinite(r["train_loss"]) for r in rows) and rows[1]["train_loss"] < rows[0]["train_loss"]
    assert summary["final"]["lr"] == pytest.approx(0.05 / 1e4, rel=0.01)


def test_results_do_not_depend_on_the_number_of_workers(shapes: Path, tmp_path: Path) -> None:
    """Each image's augmentation comes from its own seed, so workers change the speed, not the batches."""
    rows = [epoch_metrics(run(scratch(shapes, tmp_path / f"w{workers}", epochs=1, workers=workers), log=lambda m: None,
                              progress_bar=False))[0] for workers in (0, 2)]
    assert rows[0] == rows[1]


def test_device_normalization_equals_the_models_own_preprocessing(shapes: Path) -> None:
    pre = get_spec("resnet18").meta().preprocessing
    image = Image.open(next((shapes / "train" / "red").iterdir())).convert("RGB")
    on_device = Normalize(pre, torch.device("cpu"), torch.channels_last)(eval_transform(pre)(image)[None])
    assert on_device.dtype == torch.float32 and on_device.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(on_device[0], pre.transform()(image))


@pytest.mark.parametrize("device, given, expected", [
    (CPU, {}, {"precision": "fp32", "channels_last": False, "workers": 15, "pin_memory": False}),
    (Device("cuda", 0), {}, {"precision": "fp16", "channels_last": True, "workers": 15, "pin_memory": True}),
    (CPU, {"amp": True}, {"precision": "bf16"}),
    (Device("cuda", 0), {"amp": True}, {"precision": "fp16"}),
    (Device("cuda", 0), {"precision": "fp32", "channels_last": False, "workers": 3},
     {"precision": "fp32", "channels_last": False, "workers": 3}),
    (CPU, {"workers": 0}, {"workers": 0}),
])
def test_defaults_follow_the_device_and_the_cores(monkeypatch: pytest.MonkeyPatch, device: Device, given: dict,
                                                 expected: dict) -> None:
    monkeypatch.setattr(hardware, "usable_cores", lambda: 16)
    plan = hardware.plan(TrainConfig(task="train", **given), device)
    assert {name: getattr(plan, name) for name in expected} == expected
    options = plan.loader_options()
    if plan.workers:
        assert options["persistent_workers"] and options["prefetch_factor"] == (4 if device.is_cuda else 2)
    else:
        assert "persistent_workers" not in options
    assert options["pin_memory"] == device.is_cuda


def test_workers_are_shared_by_the_processes_of_a_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "usable_cores", lambda: 16)
    assert [hardware.default_workers(n) for n in (1, 2, 8, 16, 32)] == [15, 7, 1, 1, 1]
    monkeypatch.setattr(hardware, "usable_cores", lambda: 1)
    assert hardware.default_workers() == 1


@pytest.mark.parametrize("given, message", [
    ({"precision": "fp16"}, "fp16 needs a CUDA GPU"),
    ({"precision": "int8"}, "--precision must be one of fp32, fp16, bf16"),
    ({"amp": True, "precision": "fp32"}, "pass one of them"),
])
def test_precision_errors(given: dict, message: str) -> None:
    with pytest.raises(TrainingError, match=message):
        hardware.plan(TrainConfig(task="train", **given), CPU)


@pytest.mark.skipif(cuda_count() > 0, reason="checks the message of a machine without a GPU")
def test_cli_device_cuda_without_a_gpu_is_one_error_line(shapes: Path, tmp_path: Path) -> None:
    done = run_cli("train", "cifar_resnet20", shapes, "-o", tmp_path / "run", "--device", "cuda")
    assert done.returncode == 2 and done.stderr.startswith("error: --device cuda: torch sees no CUDA GPU")
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_compile_trains_a_step_and_says_it_compiles(shapes: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    summary = run(scratch(shapes / "train", tmp_path / "compiled", epochs=1, batch_size=72, val_split=0.0, compile=True),
                  log=lines.append, progress_bar=False)
    assert summary["hardware"]["compile"] and np.isfinite(summary["final"]["train_loss"])
    assert summary["final"]["images"] == 72
    assert any(line.startswith("compiling: the first step takes tens of seconds") for line in lines)


def test_out_of_memory_becomes_advice() -> None:
    with pytest.raises(TrainingError, match="--accum-steps"):
        with out_of_memory_advice(256):
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")


@pytest.mark.slow
def test_early_stopping(shapes: Path, tmp_path: Path) -> None:
    summary = run(scratch(shapes, tmp_path / "es", epochs=8, lr=1e-6, early_stop=1), progress_bar=False)
    assert summary["stopped_early"] and summary["epochs_run"] < 8


def test_schedule_shape() -> None:
    assert lr_factor(0, 100, 10, 0.1, 0.0) == pytest.approx(0.19)
    assert lr_factor(9, 100, 10, 0.1, 0.0) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, 0.1, 0.0) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, 0.1, 0.01) == pytest.approx(0.01)


# --- resume --------------------------------------------------------------------------------

def fail_at_call(monkeypatch: pytest.MonkeyPatch, call: int, action) -> None:
    """Make the ``call``-th loss computation run ``action`` (raise, or send Ctrl-C) first."""
    original = CrossEntropyObjective.__call__
    calls = {"n": 0}

    def patched(self, images, logits, labels):
        calls["n"] += 1
        if calls["n"] == call:
            action()
        return original(self, images, logits, labels)

    monkeypatch.setattr(CrossEntropyObjective, "__call__", patched)


def crash() -> None:
    raise RuntimeError("simulated crash")


def ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["crash", "ctrl-c"])
def test_resume_after_a_kill_equals_an_uninterrupted_run(trained_run: tuple[Path, dict], shapes: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    call = random.Random(how).randint(6, 14)  # somewhere in epoch 2 or 3 (5 batches per epoch)
    fail_at_call(monkeypatch, call, crash if how == "crash" else ctrl_c)
    out = tmp_path / "killed"
    with pytest.raises(RuntimeError if how == "crash" else TrainingInterrupted):
        run(scratch(shapes, out), progress_bar=False)
    monkeypatch.undo()
    resume(out, progress_bar=False)
    expected = epoch_metrics(trained_run[0])
    assert epoch_metrics(out) == [pytest.approx(row, rel=1e-5, abs=1e-6) for row in expected]
    reloaded, original = load_model(out / "last.pt").module.state_dict(), load_model(trained_run[0] / "last.pt").module.state_dict()
    assert all(torch.allclose(reloaded[k].float(), original[k].float(), atol=1e-5) for k in original)


def test_a_validation_folder_that_is_the_training_folder_or_beside_val_split_is_refused(shapes: Path,
                                                                                          tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="The validation folder is the training folder"):
        run(scratch(shapes / "train", tmp_path / "same", val_dir=str(shapes / "train")), progress_bar=False)
    with pytest.raises(DatasetError, match=r"--val-split holds images out of .* only when there is no validation"):
        run(scratch(shapes, tmp_path / "both", val_split=0.2), progress_bar=False)  # shapes has val/: was ignored


def test_resume_refuses_a_folder_without_a_run(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="Nothing to resume"):
        resume(tmp_path)


def test_resume_refuses_settings_it_would_ignore_and_a_shorter_run(trained_run: tuple[Path, dict]) -> None:
    run_dir = trained_run[0]
    ignored = run_cli("train", "--resume", run_dir, "--lr", "0.5", "--batch-size", "16", "--epochs", "4")
    assert ignored.returncode == 2 and ignored.stderr.startswith(  # --lr used to be dropped without a word
        f"error: --resume {run_dir} goes on with the run's saved settings, so --lr, --batch-size would be ignored")
    shorter = run_cli("train", "--resume", run_dir, "--epochs", "1")
    assert shorter.returncode == 2 and "has already trained 3 epochs; --epochs 1 cannot shorten it" in shorter.stderr


def test_resuming_in_another_number_of_processes_says_it_is_not_exact(trained_run: tuple[Path, dict],
                                                                     tmp_path: Path) -> None:
    run_dir = tmp_path / "two"
    shutil.copytree(trained_run[0], run_dir)
    state = safe_load(run_dir / "last.pt")
    state["train_state"]["ranks"] *= 2  # as a run of two torchrun processes saves it
    torch.save(state, run_dir / "last.pt")
    lines: list[str] = []
    resume(run_dir, epochs=4, log=lines.append, progress_bar=False)
    assert any(line.startswith("note: this run was saved by 2 training process(es) and goes on in 1:") for line in lines)


def test_a_new_run_keeps_off_an_earlier_runs_results_and_records_absolute_paths(trained_run: tuple[Path, dict],
                                                                               shapes: Path, tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    finished = tmp_path / "finished"
    shutil.copytree(trained_run[0], finished)
    (finished / "last.pt").unlink()  # only best.pt and metrics.json left: still results, not to overwrite
    with pytest.raises(TrainingError, match=r"holds files of an earlier run \(best.pt, metrics.json\)"):
        run(scratch(shapes, finished, epochs=1), progress_bar=False)
    monkeypatch.chdir(shapes.parent)
    run(scratch(Path(shapes.name), tmp_path / "relative", epochs=1), progress_bar=False)
    assert json.loads((tmp_path / "relative" / "config.json").read_text())["data_dir"] == str(shapes)
    monkeypatch.chdir(tmp_path)  # the run resumes from anywhere: its data folder is recorded absolute
    assert resume(tmp_path / "relative", epochs=2, progress_bar=False)["epochs_run"] == 2


def test_an_exported_model_is_refused_for_training_with_one_clear_line(shapes: Path, tmp_path: Path) -> None:
    from resnetkit.backends.torchscript import save_torchscript

    spec = get_spec("cifar_resnet20")
    script = save_torchscript(spec.build().eval(), spec.meta().replace(weights="random"), tmp_path / "m.torchscript")
    done = run_cli("finetune", script, shapes, "-o", tmp_path / "run", "--epochs", "1")
    assert done.returncode == 2 and done.stderr.startswith("error: 'training' needs the PyTorch model, but cifar_resnet20 was "
                                                           "loaded from an exported file")
    assert not (tmp_path / "run").exists()


# --- bad data ---------------------------------------------------------------------------

def test_unreadable_files_are_skipped_and_counted(shapes: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(shapes / "train", data)
    (data / "red" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (data / "blue" / "placeholder.gif").write_text("<html>image not found</html>")
    lines: list[str] = []
    summary = run(scratch(data, tmp_path / "out", epochs=1, val_split=0.0), log=lines.append, progress_bar=False)
    assert summary["final"]["skipped"] == 2 and summary["final"]["images"] == 72
    skipped = [line for line in lines if "skipped unreadable file" in line]
    assert len(skipped) == 2 and all("is not an image format that can be read" in line for line in skipped)


def test_placeholder_gif_of_hymenoptera_is_flagged(hymenoptera_dir: Path) -> None:
    splits = load_splits(str(hymenoptera_dir), None, None, seed=0)
    assert splits.val_source == str(hymenoptera_dir / "val") and splits.classes == ["ants", "bees"]
    assert [p.name for p in rare_format_files(splits.train + splits.val)] == ["imageNotFound.gif"]


@pytest.mark.parametrize("layout, message", [
    ({"train/a": 3, "train/b": 0}, "without images"),
    ({"train/a": 3}, "single class"),
    ({"train/a": 3, "train/b": 3, "val/a": 2, "val/c": 2}, "classes differ"),
])
def test_clear_errors_for_bad_layouts(tmp_path: Path, layout: dict[str, int], message: str) -> None:
    for folder, count in layout.items():
        (tmp_path / folder).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (8, 8)).save(tmp_path / folder / f"{i}.png")
    with pytest.raises(DatasetError, match=message):
        run(scratch(tmp_path, tmp_path / "out"), progress_bar=False)


@pytest.mark.parametrize("given, message", [
    ({"head_lr": -1.0}, "--head-lr must be positive, got -1.0"),
    ({"clip_grad": -1.0}, "--clip-grad must be positive, got -1.0"),
    ({"weight_decay": -1.0}, "--weight-decay must be 0 or more, got -1.0"),
    ({"warmup_epochs": -1.0}, "--warmup-epochs must be 0 or more, got -1.0"),
    ({"label_smoothing": 2.0}, r"--label-smoothing must be in \[0, 1\), got 2.0"),
    ({"label_smoothing": -0.5}, r"--label-smoothing must be in \[0, 1\), got -0.5"),
])
def test_settings_that_would_train_backwards_are_refused(given: dict, message: str) -> None:
    with pytest.raises(TrainingError, match=message):
        TrainConfig(task="train", **given)


@pytest.mark.parametrize("where, message", [
    ("a-file", "is a file, not a folder"),
    ("a-file/run", "Cannot write the run folder"),
    ("data/red", "whose sub-folders are the classes"),
    ("data", "whose sub-folders are the classes"),
    ("data/runs/new", "whose sub-folders are the classes"),
])
def test_cli_refuses_a_run_folder_it_cannot_or_must_not_use(shapes: Path, tmp_path: Path, where: str,
                                                             message: str) -> None:
    data = tmp_path / "data"
    shutil.copytree(shapes / "train", data)
    (tmp_path / "a-file").write_text("keep me")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    done = run_cli("train", "cifar_resnet20", data, "-o", tmp_path / where, "--epochs", "1", "--batch-size", "32")
    assert done.returncode == 2 and done.stderr.startswith("error: ") and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written
    assert (tmp_path / "a-file").read_text() == "keep me"


def test_a_run_folder_beside_train_and_val_is_fine(shapes: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(shapes, data)  # train/ and val/
    summary = run(scratch(data, data / "runs" / "first", epochs=1), progress_bar=False)
    assert summary["epochs_run"] == 1 and (data / "runs" / "first" / "best.pt").is_file()


def test_a_diverging_run_stops_with_advice_and_leaves_nothing(shapes: Path, tmp_path: Path) -> None:
    out = tmp_path / "diverged"
    with pytest.raises(TrainingError, match="lower --lr"):
        run(scratch(shapes, out, lr=1e6, epochs=2), progress_bar=False)
    assert not out.exists()  # failed before its first checkpoint: not even config.json is left


def test_cli_distill_names_the_student_in_an_input_mismatch(trained_run: tuple[Path, dict], shapes: Path,
                                                            tmp_path: Path) -> None:
    done = run_cli("distill", shapes, "--teacher", trained_run[0] / "best.pt", "--student", "resnet18",
                   "--random-weights", "--epochs", "1", "-o", tmp_path / "kd")
    assert done.returncode == 2 and "but student resnet18 expects" in done.stderr, done.stderr
    assert not (tmp_path / "kd").exists()


def test_cli_finetune_and_error_messages(trained_run: tuple[Path, dict], shapes: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    done = run_cli("finetune", trained_run[0] / "best.pt", shapes, "-o", out, "--mode", "head", "--epochs", "1",
                   "--batch-size", "32", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["val_source"] == str(shapes / "val")
    assert "% of the time waiting for data" in done.stderr.splitlines()[-1]
    again = run_cli("finetune", "cifar_resnet20", shapes, "-o", out)
    assert again.returncode == 2 and again.stderr.startswith(f"error: {out} already holds a run") and "--resume" in again.stderr


@pytest.mark.parametrize("task, given, expected", [
    ("finetune", {}, {**FROM_WEIGHTS, "mode": "last-stage", "pretrained": True}),
    ("train", {}, {**FROM_RANDOM, "mode": "full", "pretrained": False}),
    ("distill", {"teacher": "t"}, {**FROM_WEIGHTS, "mode": "full", "pretrained": True}),
    ("distill", {"teacher": "t", "pretrained": False}, {**FROM_RANDOM, "pretrained": False}),
    ("finetune", {"mode": "head", "lr": 0.5}, {**FROM_WEIGHTS, "mode": "head", "lr": 0.5}),
])
def test_library_defaults_depend_on_how_a_run_starts(task: str, given: dict, expected: dict) -> None:
    config = TrainConfig(task=task, **given)
    assert {name: getattr(config, name) for name in expected} == expected


def test_cli_distill_from_random_weights_takes_the_random_weights_defaults(trained_run: tuple[Path, dict], shapes: Path,
                                                                          tmp_path: Path) -> None:
    finetune = typer.main.get_command(app).commands["finetune"]
    assert next(p for p in finetune.params if p.name == "mode").help.endswith("(default: last-stage)")  # the library's
    out = tmp_path / "kd"
    done = run_cli("distill", shapes, "--teacher", trained_run[0] / "best.pt", "--student", "cifar_resnet20",
                   "--random-weights", "--no-baseline", "--epochs", "1", "--batch-size", "32", "-o", out, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["epochs_run"] == 1
    config = json.loads((out / "config.json").read_text())
    assert {k: config[k] for k in ("task", "pretrained", "mode", "lr", "weight_decay")} == \
        {"task": "distill", "pretrained": False, "mode": "full", "lr": FROM_RANDOM["lr"], "weight_decay": FROM_RANDOM["weight_decay"]}


def test_cli_resume_extends_a_finished_run(trained_run: tuple[Path, dict], tmp_path: Path) -> None:
    run_dir = tmp_path / "more"
    shutil.copytree(trained_run[0], run_dir)
    done = run_cli("train", "--resume", run_dir, "--epochs", "4", "--json")
    assert done.returncode == 0, done.stderr
    assert "3 of 4 epochs done" in done.stderr and json.loads(done.stdout)["epochs_run"] == 4
    assert epoch_metrics(run_dir)[:3] == epoch_metrics(trained_run[0])
    summary = run_cli("train", "--resume", run_dir).stdout  # finished: prints the summary again
    best = json.loads((run_dir / "metrics.json").read_text())["summary"]["best"]
    assert f"best epoch {best['epoch']}: val top-1 {best['val_top1']:.2f} % on 24 images" in summary


# --- distillation ---------------------------------------------------------------------------

def test_distillation_loss_is_cross_entropy_when_teacher_agrees() -> None:
    teacher = torch.nn.Linear(4, 3)
    images, labels = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    logits = teacher(images)
    loss = DistillationObjective(teacher, temperature=4.0, alpha=0.3)(images, logits, labels)
    assert loss.item() == pytest.approx(0.7 * torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-5)


@pytest.mark.slow
def test_distill_reports_student_with_and_without_teacher(trained_run: tuple[Path, dict], shapes: Path, tmp_path: Path) -> None:
    config = scratch(shapes, tmp_path / "kd", task="distill", teacher=str(trained_run[0] / "best.pt"), epochs=1)
    report = distill_with_baseline(config, progress_bar=False)
    for name, folder in [("distilled", tmp_path / "kd"), ("baseline", tmp_path / "kd" / "baseline")]:
        last = epoch_metrics(folder)[-1]  # what each run wrote, so the report compares the two real runs
        assert report[name]["final_val_top1"] == last["val_top1"] and report[name]["final_train_loss"] == last["train_loss"]
    assert json.loads((tmp_path / "kd" / "baseline" / "config.json").read_text())["teacher"] is None
    assert json.loads((tmp_path / "kd" / "distill_report.json").read_text()) == report


def test_a_class_left_out_of_validation_is_named(shapes: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(shapes / "train", data)
    for extra in sorted((data / "blue").iterdir())[1:]:
        extra.unlink()  # blue keeps one image: --val-split holds none of it out
    lines: list[str] = []
    run(scratch(data, tmp_path / "out", epochs=1), log=lines.append, progress_bar=False)
    assert "note: no validation image of blue (a class with a single image keeps it for training)" in "\n".join(lines)


def test_the_baseline_has_the_distilled_students_classes(trained_run: tuple[Path, dict], shapes: Path,
                                                          tmp_path: Path) -> None:
    data = tmp_path / "two"
    for colour in ("red", "green"):  # two of the teacher's three classes
        shutil.copytree(shapes / "train" / colour, data / colour)
    config = scratch(data, tmp_path / "kd", task="distill", teacher=str(trained_run[0] / "best.pt"), epochs=1)
    distill_with_baseline(config, progress_bar=False)
    teacher = load_model(trained_run[0] / "best.pt").meta.categories
    student, baseline = (load_model(tmp_path / "kd" / sub / "best.pt").meta.categories for sub in ("", "baseline"))
    assert student == baseline == teacher  # the baseline had the folders' two classes: an easier task


def test_a_baseline_interrupted_says_the_distillation_folder_finishes_it(trained_run: tuple[Path, dict], shapes: Path,
                                                                         tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    config = scratch(shapes, tmp_path / "kd", task="distill", teacher=str(trained_run[0] / "best.pt"), epochs=1)
    fail_at_call(monkeypatch, 7, ctrl_c)  # in the baseline: the distillation (5 batches) counts 5 cross-entropies
    with pytest.raises(TrainingInterrupted, match=r"Or --resume .*kd, which finishes the baseline and writes "
                                                  "distill_report.json"):
        distill_with_baseline(config, progress_bar=False)
    monkeypatch.undo()
    distill_with_baseline(config, progress_bar=False, resuming=True)
    assert json.loads((tmp_path / "kd" / "distill_report.json").read_text())["baseline"]["best_epoch"] == 1


# --- distributed ----------------------------------------------------------------------------

@pytest.mark.slow
def test_ddp_two_processes_on_gloo(trained_run: tuple[Path, dict], shapes: Path, tmp_path: Path) -> None:
    """The same run as ``trained_run`` (one process) under torchrun with two gloo processes."""
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    done = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", RESNETKIT, "train", "cifar_resnet20",
                           str(shapes), "-o", str(tmp_path / "two"), "--epochs", "3", "--batch-size", "8", "--lr", "0.05",
                           "--device", "cpu", "--json"], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["world_size"] == 2  # only rank 0 prints
    one, two = (json.loads((d / "metrics.json").read_text()) for d in (trained_run[0], tmp_path / "two"))
    assert one["summary"].keys() == two["summary"].keys() and one["summary"]["world_size"] == 1
    assert [r.keys() for r in two["epochs"]] == [r.keys() for r in one["epochs"]]
    assert [r["images"] for r in two["epochs"]] == [r["images"] for r in one["epochs"]] == [72, 72, 72]
    assert load_model(tmp_path / "two" / "best.pt").meta.categories == ("blue", "green", "red")


# --- real data ----------------------------------------------------------------------------

@pytest.mark.slow
def test_finetune_cifar_weights_on_hymenoptera(cifar_weights: Path, hymenoptera_dir: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    summary = run(TrainConfig(task="finetune", model="cifar_resnet32", data_dir=str(hymenoptera_dir),
                              out_dir=str(tmp_path / "ants"), mode="head", epochs=1, batch_size=64),
                  log=lines.append, progress_bar=False)
    assert (summary["train_images"], summary["val_images"]) == (245, 153)
    assert summary["classes"] == ["ants", "bees"] and summary["final"]["images"] == 245
    assert any("imageNotFound.gif" in line for line in lines)
    assert load_model(tmp_path / "ants" / "best.pt").meta.extra["train"]["head_lr"] == pytest.approx(0.1)


# --- GPU ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cifar_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 500 training images of each CIFAR-10 class (symbolic links)."""
    source, root = require(CIFAR_TRAIN), tmp_path_factory.mktemp("cifar5k")
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        (root / folder.name).mkdir()
        for file in sorted(folder.iterdir())[:500]:
            (root / folder.name / file.name).symlink_to(file)
    return root


@pytest.mark.gpu
def test_cuda_defaults_train_cifar_resnet20(cifar_subset: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    summary = run(TrainConfig(task="train", model="cifar_resnet20", data_dir=str(cifar_subset), out_dir=str(tmp_path / "gpu"),
                              epochs=2, batch_size=128, val_split=0.0, device="cuda"), log=lines.append, progress_bar=False)
    used = summary["hardware"]
    assert used["device"] == "cuda:0" and used["precision"] == "fp16" and used["channels_last"] and used["pin_memory"]
    assert used["workers"] == hardware.default_workers() > 0
    first, second = epoch_metrics(tmp_path / "gpu")
    assert second["train_loss"] < first["train_loss"] and second["train_top1"] > 15  # chance is 10 %
    assert "fp16 autocast + gradient scaler, channels_last" in lines[0]


@pytest.mark.gpu
def test_cuda_batches_arrive_pinned(cifar_subset: Path) -> None:
    plan = hardware.plan(TrainConfig(task="train"), resolve_device("cuda"))
    splits = load_splits(str(cifar_subset), None, 0.0, seed=0)
    loader = make_loader(splits.train, eval_transform(get_spec("cifar_resnet20").meta().preprocessing),
                         ShardedSampler(len(splits.train), shuffle=True, seed=0), 64, plan.loader_options())
    batch = next(iter(loader))
    assert batch.images.dtype == torch.uint8 and batch.images.is_pinned() and batch.labels.is_pinned()
