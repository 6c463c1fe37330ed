"""classify and evaluate on real weights and data, plus artifacts as model references."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from resnetkit import classify, evaluate, load_model
from resnetkit.backends.base import RunnerOptions
from resnetkit.core.artifacts import save_artifact
from resnetkit.core.device import CPU, resolve_device
from resnetkit.core.datasets import imagenet_wnids, match_folders_to_categories
from resnetkit.core.errors import DatasetError, ImageError, ResnetkitError, UnknownModelError
from resnetkit.core.images import decode_image
from resnetkit.core.zoo import CIFAR10_CLASSES, get_spec

from conftest import make_image, run_cli


@pytest.mark.slow
@pytest.mark.parametrize("model, expected", [("cifar_resnet20", 81.03), ("cifar_resnet32", 82.56)])
def test_cifar_accuracy_matches_reference(cifar_weights, cifar_test_dir, model, expected):
    report = evaluate(model, cifar_test_dir, batch_size=250, progress=False)
    assert report.n_images == 10_000 and report.n_skipped == 0
    assert report.top1 == pytest.approx(expected, abs=0.2)
    assert report.top5 > report.top1 and len(report.per_class) == 10
    assert sum(map(sum, report.confusion)) == 10_000


@pytest.mark.slow
def test_classify_real_images_with_a_bad_file_among_them(cifar_weights, cifar_test_dir, tmp_path):
    cats = sorted((cifar_test_dir / "ship").glob("*.jpg"))[:4]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    results = classify("cifar_resnet20", [*cats, bad], top_k=3, batch_size=2)
    assert [r.source for r in results] == [str(p) for p in [*cats, bad]]
    good = results[:4]
    assert all(r.error is None and len(r.predictions) == 3 for r in good)
    assert sum(r.predictions[0].label == "ship" for r in good) >= 3
    model = load_model("cifar_resnet20")
    for path, result in zip(cats, good):  # the scores are the model's top-3 softmax probabilities of that image
        top = model.probabilities(model.transform(decode_image(path)).unsqueeze(0))[0].topk(3)
        assert [p.index for p in result.predictions] == top.indices.tolist()
        assert [p.score for p in result.predictions] == pytest.approx(top.values.tolist(), abs=1e-5)
    assert results[4].error and "could not be decoded" in results[4].error and results[4].predictions == []


@pytest.mark.slow
def test_batched_classify_equals_one_by_one(tmp_path):
    model = load_model("cifar_resnet20", pretrained=False)
    paths = [make_image(tmp_path / f"{i}.png", size=(40 + i, 30), seed=i) for i in range(5)]
    together = classify(model, paths, batch_size=5)
    alone = [classify(model, [p], batch_size=1)[0] for p in paths]
    for a, b in zip(together, alone):
        assert [p.index for p in a.predictions] == [p.index for p in b.predictions]
        assert [p.score for p in a.predictions] == pytest.approx([p.score for p in b.predictions], abs=1e-5)


@pytest.mark.slow
def test_probabilities_are_the_softmax_of_the_logits():
    model = load_model("cifar_resnet20", pretrained=False, backend="eager")
    batch = torch.randn(4, 3, 32, 32)
    probabilities = model.probabilities(batch)
    assert probabilities.dtype == torch.float32 and probabilities.shape == (4, 10)
    assert torch.allclose(probabilities, torch.softmax(model.logits(batch), dim=1), atol=1e-6)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(4), atol=1e-6)


def test_artifact_is_a_model_reference_everywhere(tmp_path):
    model = load_model("cifar_resnet20", pretrained=False)
    meta = model.meta.replace(name="my-cifar", categories=tuple(c.upper() for c in CIFAR10_CLASSES))
    path = save_artifact(tmp_path / "mine.pt", model.module, meta)
    loaded = load_model(path)
    assert loaded.meta.name == "my-cifar" and loaded.meta.categories[0] == "AIRPLANE"
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(loaded.logits(x), model.logits(x), atol=1e-6)
    image = make_image(tmp_path / "x.png")
    assert classify(path, [image])[0].predictions[0].label.isupper()
    with pytest.raises(UnknownModelError, match="--weights only applies"):
        load_model(path, weights="x")


def test_non_artifact_files_are_explained(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save(get_spec("cifar_resnet20").build().state_dict(), plain)
    with pytest.raises(UnknownModelError, match="not a resnetkit artifact"):
        load_model(plain)
    other = tmp_path / "notes.txt"
    other.write_text("hi")
    with pytest.raises(UnknownModelError, match="not a model file resnetkit can read"):
        load_model(other)


def test_folder_matching_by_name_and_wordnet_id():
    categories = get_spec("resnet18").default_weights.categories
    mapping = match_folders_to_categories(["Great_White_Shark", imagenet_wnids()[0], "goldfish"], categories)
    assert mapping == {"Great_White_Shark": 2, imagenet_wnids()[0]: 0, "goldfish": 1}
    with pytest.raises(DatasetError, match="'unicorn'"):
        match_folders_to_categories(["goldfish", "unicorn"], categories)


@pytest.mark.slow
def test_evaluate_on_generated_folder_counts_skipped_files(tmp_path):
    for name in ("Cat", "dog"):
        for i in range(3):
            make_image(tmp_path / "data" / name / f"{i}.png", size=(32, 32), seed=i)
    (tmp_path / "data" / "dog" / "junk.jpg").write_bytes(b"junk")
    make_image(tmp_path / "data" / "dog" / ".ipynb_checkpoints" / "0-checkpoint.png")  # hidden: not data
    report = evaluate(load_model("cifar_resnet20", pretrained=False), tmp_path / "data", batch_size=4, workers=0)
    assert report.n_images == 6 and report.n_skipped == 1 and report.skipped_files == [
        f"{tmp_path / 'data' / 'dog' / 'junk.jpg'} is not an image format that can be read (JPEG, PNG, BMP, GIF, TIFF, "
        "WebP...)."]  # which file, and why
    assert report.classes == ["cat", "dog"] and len(report.confusion) == 2
    with pytest.raises(DatasetError, match="No such folder"):
        evaluate("cifar_resnet20", tmp_path / "nowhere")


@pytest.mark.slow
def test_cli_classify_json_and_exit_codes(cifar_weights, cifar_test_dir, tmp_path):
    folder = tmp_path / "imgs"
    shutil.copytree(cifar_test_dir / "horse", folder, ignore=lambda d, names: sorted(names)[3:])
    ok = run_cli("classify", "cifar_resnet20", str(folder), "--json", "--top-k", "2")
    assert ok.returncode == 0, ok.stderr
    data = json.loads(ok.stdout)
    assert data["model"] == "cifar_resnet20" and len(data["results"]) == 3 and data["random_weights"] is False
    assert all(len(r["predictions"]) == 2 and r["error"] is None for r in data["results"])
    ran = load_model("cifar_resnet20", options=RunnerOptions(batch_size=16)).ran  # auto's cached choice for the CLI's batch
    assert {k: data[k] for k in ran.to_dict()} == ran.to_dict() and data["device_name"] == ran.device.name
    (folder / "zz_bad[red].png").write_bytes(b"nope")  # brackets in a name must print as they are
    partial = run_cli("classify", "cifar_resnet20", str(folder))
    assert partial.returncode == 1 and "zz_bad[red].png: error:" in partial.stdout and partial.stdout.count("%") >= 3
    assert len(partial.stdout.splitlines()) == 4  # one line per image; what ran is said on stderr
    assert partial.stderr.splitlines()[0] == f"cifar_resnet20: {ran.label()}"


def test_cli_evaluate_checks_the_folder_before_fetching_weights(tmp_path):
    empty_cache = {"TORCH_HOME": str(tmp_path / "torch"), "RESNETKIT_OFFLINE": "1"}
    result = run_cli("evaluate", "cifar_resnet20", tmp_path / "typo", env=empty_cache)
    assert result.returncode == 2 and "No such folder" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_cli_evaluate_json_and_plot(cifar_weights, cifar_test_dir, tmp_path):
    plot = tmp_path / "cm.png"
    result = run_cli("evaluate", "cifar_resnet32", str(cifar_test_dir), "--limit", "200", "--json", "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert {"model", "top1", "top5", "n_images"} <= set(data) and data["n_images"] == 200
    assert {"backend", "precision", "device", "device_name", "label"} <= set(data) and data["random_weights"] is False
    assert 60 < data["top1"] <= 100
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_classify_any_imagenet_model_offline_with_random_weights(tmp_path):
    image = make_image(tmp_path / "x.jpg")
    offline = {"TORCH_HOME": str(tmp_path / "empty cache"), "RESNETKIT_OFFLINE": "1"}
    args = ("classify", "resnet18", image, "--random-weights", "--backend", "eager", "--device", "cpu", "-k", "2")
    plain = run_cli(*args, env=offline)
    assert plain.returncode == 0, plain.stderr
    assert plain.stderr.splitlines() == ["random weights: labels are meaningless", "resnet18: eager/fp32 on CPU"]
    [line] = plain.stdout.splitlines()
    assert line.startswith(f"{image}: ") and line.count("%") == 2
    data = json.loads(run_cli(*args, "--json", env=offline).stdout)
    assert data["random_weights"] is True and len(data["results"][0]["predictions"]) == 2
    assert {k: data[k] for k in ("backend", "precision", "device", "device_name", "label")} == {
        "backend": "eager", "precision": "fp32", "device": "cpu", "device_name": "CPU", "label": "eager/fp32 on CPU"}
    assert not (tmp_path / "empty cache").exists()  # nothing was downloaded


def test_evaluate_with_random_weights_says_its_labels_are_meaningless(tmp_path):
    for name in ("cat", "dog"):
        for i in range(2):
            make_image(tmp_path / "data" / name / f"{i}.png", size=(32, 32), seed=i)
    args = ("evaluate", "cifar_resnet20", tmp_path / "data", "--random-weights", "--backend", "eager", "--device", "cpu",
            "--workers", "0")
    plain = run_cli(*args)
    assert plain.returncode == 0, plain.stderr
    assert plain.stderr.splitlines()[0] == "random weights: labels are meaningless"
    assert "(4 images, 0 unreadable skipped)" in plain.stdout
    assert "eager/fp32 on CPU, batch 64, 0 decode workers)" in plain.stdout
    data = json.loads(run_cli(*args, "--json").stdout)
    assert data["random_weights"] is True and data["n_images"] == 4 and data["workers"] == 0
    limited = run_cli(*args, "--limit", "3")
    assert "(3 images of 4, a fixed random subset (seed 0), 0 unreadable skipped)" in limited.stdout
    assert (data["backend"], data["precision"], data["device"], data["device_name"]) == ("eager", "fp32", "cpu", "CPU")


def test_evaluate_report_names_what_ran_and_decodes_with_the_default_workers(tmp_path):
    from resnetkit.run.classify import default_workers

    for i in range(3):
        make_image(tmp_path / "data" / "ship" / f"{i}.png", size=(32, 32), seed=i)
    model = load_model("cifar_resnet20", pretrained=False, backend="eager", options=RunnerOptions(device=CPU))
    report = evaluate(model, tmp_path / "data", progress=False)
    assert report.ran == model.ran and report.workers == default_workers(CPU) and report.random_weights
    data = report.to_dict()
    assert "ran" not in data and data["label"] == "eager/fp32 on CPU" and data["device"] == "cpu"
    json.dumps(data)  # plain JSON: no objects left


CIFAR_SAMPLE = 20  # test images per class for the GPU-vs-CPU comparisons


def cifar_sample(root) -> list:
    return [p for c in CIFAR10_CLASSES for p in sorted((root / c).glob("*.jpg"))[:CIFAR_SAMPLE]]


@pytest.mark.gpu
def test_classify_on_the_gpu_gives_the_cpu_labels(cifar_weights, cifar_test_dir):
    files = cifar_sample(cifar_test_dir)
    cpu = classify(load_model("cifar_resnet20", backend="eager", options=RunnerOptions(precision="fp32", device=CPU)),
                   files, top_k=1)
    result = run_cli("classify", "cifar_resnet20", *files, "--device", "cuda", "--json", "-k", "1")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["device"] == "cuda:0" and data["device_name"] == resolve_device("cuda").name
    same = sum(a.predictions[0].index == b["predictions"][0]["index"] for a, b in zip(cpu, data["results"]))
    assert same >= 0.98 * len(files)  # fp16 on the GPU: a rare near-tie may flip


@pytest.mark.gpu
def test_evaluate_on_the_gpu_agrees_with_the_cpu(cifar_weights, cifar_test_dir):
    def report(*device: str) -> dict:
        result = run_cli("evaluate", "cifar_resnet20", cifar_test_dir, "--limit", "1000", "--json", *device)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    cpu = report("--device", "cpu", "--backend", "eager", "--precision", "fp32")
    gpu = report("--device", "cuda")
    assert gpu["device"] == "cuda:0" and cpu["device"] == "cpu" and gpu["n_images"] == cpu["n_images"] == 1000
    # images whose top-1 moved to another cell of the confusion matrix (a lower bound of the labels that changed)
    moved = sum(abs(a - b) for row_a, row_b in zip(cpu["confusion"], gpu["confusion"]) for a, b in zip(row_a, row_b)) / 2
    assert moved <= 20 and abs(cpu["top1"] - gpu["top1"]) <= 1.0


# --- the Python API as a notebook uses it ---------------------------------------------------------

@pytest.fixture(scope="module")
def eager_random():
    return load_model("cifar_resnet20", pretrained=False, backend="eager")


def test_one_path_as_a_str_or_path_is_one_path_not_its_letters(eager_random, tmp_path):
    image = make_image(tmp_path / "a.png", size=(40, 30))
    expected = classify(eager_random, [image], top_k=2)
    assert classify(eager_random, str(image), top_k=2) == expected == classify(eager_random, image, top_k=2)
    assert [r.source for r in classify(eager_random, str(tmp_path), top_k=1)] == [str(image)]  # a folder, walked


def test_images_in_memory_get_the_labels_their_files_get(eager_random, tmp_path):
    import numpy as np
    from PIL import Image

    from resnetkit import classify_images

    path = make_image(tmp_path / "a.png", size=(40, 30))  # PNG: no reduced-scale JPEG decoding on either side
    [from_file] = classify(eager_random, [path], top_k=3)
    pixels = np.array(Image.open(path).convert("RGB"))
    held = [Image.open(path), path.read_bytes(), pixels, torch.from_numpy(pixels).permute(2, 0, 1)]
    assert classify_images(eager_random, held, top_k=3) == [from_file.predictions] * 4
    assert classify_images(eager_random, held[0], top_k=3) == [from_file.predictions]  # one image, not a list
    with pytest.raises(ImageError, match=r"Cannot read a Tensor of shape \(1, 3, 32, 32\) and dtype torch.float32 "
                                         r"as an image.*Classifier.probabilities\(batch\)"):
        classify_images(eager_random, torch.rand(1, 3, 32, 32))
    with pytest.raises(ImageError, match="got a PngImageFile; classify images already in memory .* with classify_images"):
        classify(eager_random, [Image.open(path)])


def test_a_classifier_prints_as_one_line(tmp_path):
    model = load_model("resnet18", pretrained=False, backend="eager")
    assert repr(model) == "Classifier(resnet18: resnet18, 1000 classes, runner built on first use)"  # not 19k chars
    classify(model, [make_image(tmp_path / "a.png")])
    assert repr(model) == "Classifier(resnet18: resnet18, 1000 classes, eager/fp32 on CPU)"


def test_counts_below_one_and_arguments_of_other_types_are_clear_errors(eager_random, tmp_path):
    from torch import nn

    with pytest.raises(ResnetkitError, match=r"batch_size \(--batch-size\) must be at least 1 \(got 0\)"):
        classify(eager_random, [make_image(tmp_path / "a.png")], batch_size=0)  # was [] without a word
    with pytest.raises(UnknownModelError, match="not a Linear; weights of a zoo architecture saved with"):
        load_model(nn.Linear(2, 2))
    checkpoint = tmp_path / "w.pt"
    torch.save(get_spec("cifar_resnet20").build().state_dict(), checkpoint)
    loaded = load_model("cifar_resnet20", weights=checkpoint, device=torch.device("cpu"), backend="eager")
    assert loaded.meta.weights == str(checkpoint) and loaded.ran.device.kind == "cpu"
