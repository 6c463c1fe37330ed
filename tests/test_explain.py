"""Heatmaps (grad-cam) on real CIFAR-10 and hymenoptera photos: files, sizes, labels, HTTP route."""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from fastapi.testclient import TestClient
import torch
from PIL import Image

from conftest import make_image
from resnetkit.core.errors import ModuleRequiredError, ResnetkitError
from resnetkit.explain import explain
from resnetkit.run.classify import classify
from resnetkit.run.loading import load_model
from test_features import run_cli


def first_image(folder: Path) -> Path:
    return sorted(p for p in folder.iterdir() if p.suffix == ".jpg")[0]


@pytest.mark.slow
def test_explain_writes_top_k_heatmaps_of_the_image_size(cifar_weights, cifar_test_dir, hymenoptera_dir, tmp_path, capsys):
    cat = first_image(cifar_test_dir / "cat")
    bee = first_image(hymenoptera_dir / "val" / "bees")  # larger than the 32 px input: mapped back over the crop
    code, stdout, stderr = run_cli(capsys, "explain", "cifar_resnet20", str(cat), str(bee), "-o", str(tmp_path), "-k", "3")
    assert code == 0
    expected = classify(load_model("cifar_resnet20", backend="eager"), [cat, bee], top_k=3)  # the module explained
    index = json.loads((tmp_path / "explanations.json").read_text())
    assert index["model"] == "cifar_resnet20" and index["method"] == "gradcam" and index["random_weights"] is False
    assert index["class_agnostic"] is False
    assert index["backend"] == "eager" and index["precision"] == "fp32"  # grad-cam runs the float32 module
    assert stderr.splitlines() == [f"cifar_resnet20: {index['label']}"]  # what ran, e.g. eager/fp32 on CPU
    for source, want, entry in zip((cat, bee), expected, index["results"]):
        labels = [p.label for p in want.predictions]
        assert [h["label"] for h in entry["heatmaps"]] == labels
        for rank, heatmap in enumerate(entry["heatmaps"], 1):
            path = Path(heatmap["path"])
            assert path.name == f"{source.stem}_top{rank}_{heatmap['label']}.png" and str(path) in stdout
            with Image.open(path) as png:
                assert png.format == "PNG" and png.text["label"] == heatmap["label"]
                assert png.size == Image.open(source).size
                pixels = np.asarray(png.convert("RGB"), dtype=np.float32)
            assert pixels.std() > 10  # not a constant image
            original = np.asarray(Image.open(source).convert("RGB"), dtype=np.float32)
            assert np.abs(pixels - original).mean() > 10  # a heatmap was drawn over the photo


def test_heatmaps_differ_between_classes(cifar_weights, cifar_test_dir, tmp_path):
    [result] = explain("cifar_resnet20", [first_image(cifar_test_dir / "ship")], tmp_path, top_k=2).results
    first, second = (np.asarray(Image.open(h.path), dtype=np.float32) for h in result.heatmaps)
    assert np.abs(first - second).mean() > 1


def test_a_class_agnostic_method_writes_one_heatmap_per_image_for_all_its_classes(tmp_path, capsys):
    image = make_image(tmp_path / "a.png", size=(40, 30))
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(capsys, "explain", "cifar_resnet20", str(image), "-o", str(out), "-k", "2",
                                   "--method", "eigencam", "--random-weights", "--device", "cpu")
    index = json.loads((out / "explanations.json").read_text())
    heatmaps = index["results"][0]["heatmaps"]
    assert code == 0 and index["class_agnostic"] is True and len(heatmaps) == 2  # the top-2 classes...
    assert sorted(p.name for p in out.iterdir()) == ["a_eigencam.png", "explanations.json"]  # ...share one map
    assert {h["path"] for h in heatmaps} == {str(out / "a_eigencam.png")}
    (first, second) = (f"{h['label']} {100 * h['score']:.2f}%" for h in heatmaps)
    assert stdout.splitlines() == [f"{image}:", f"  {first}, {second}  {out / 'a_eigencam.png'}"]
    assert "eigencam is class-agnostic: one heatmap per image" in stderr
    with Image.open(out / "a_eigencam.png") as png:
        assert png.text["class_agnostic"] == "true" and "label" not in png.text and png.size == (40, 30)


def test_nothing_is_written_when_no_image_could_be_explained(tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(capsys, "explain", "cifar_resnet20", str(tmp_path / "missing.jpg"), "-o", str(out),
                                   "--random-weights", "--device", "cpu")
    assert code == 1 and not out.exists()
    assert stdout.startswith(f"{tmp_path / 'missing.jpg'}: error: No such file") and len(stdout.splitlines()) == 1
    assert stderr.splitlines()[-1] == "1 of 1 file(s) could not be explained, nothing written."


def test_bad_images_are_error_rows_and_bad_options_explain_themselves(tmp_path):
    broken = tmp_path / "in" / "broken.png"
    broken.parent.mkdir()
    broken.write_bytes(b"nope")
    good = make_image(tmp_path / "in" / "good.png", size=(50, 40))
    report = explain("resnet18", [broken, good], tmp_path / "out", top_k=1, pretrained=False, device="cpu")
    results = report.results
    assert "is not an image format" in results[0].error and not results[0].heatmaps
    assert Image.open(results[1].heatmaps[0].path).size == (50, 40)
    assert report.random_weights and report.ran.label() == "eager/fp32 on CPU"
    assert json.loads((tmp_path / "out" / "explanations.json").read_text()) == json.loads(json.dumps(report.to_dict()))
    with pytest.raises(ResnetkitError, match="Unknown explanation method 'magic'. Choose one of: gradcam"):
        explain("resnet18", [good], tmp_path / "out", method="magic", pretrained=False)


def test_explainer_runs_its_module_and_inputs_on_its_device(tmp_path, capsys):
    from resnetkit.explain import Explainer
    from resnetkit.run.loading import load_model

    classifier = load_model("cifar_resnet20", pretrained=False, backend="eager")
    explainer = Explainer(classifier, device="cpu")
    assert {p.device.type for p in explainer.module.parameters()} == {"cpu"}
    assert {p.dtype for p in explainer.module.parameters()} == {torch.float32}
    assert explainer.module is not classifier.module and explainer.ran.label() == "eager/fp32 on CPU"
    image = make_image(tmp_path / "a.png", size=(40, 30))
    code, _, stderr = run_cli(capsys, "explain", "cifar_resnet20", str(image), "-o", str(tmp_path / "out"), "-k", "1",
                              "--random-weights", "--device", "cpu")
    assert code == 0 and stderr.splitlines() == ["random weights: labels are meaningless",
                                                 "cifar_resnet20: eager/fp32 on CPU"]


def test_exported_files_say_they_cannot_be_explained(tmp_path, capsys):
    from resnetkit.backends.torchscript import save_torchscript
    from resnetkit.core.zoo import get_spec

    spec = get_spec("cifar_resnet20")
    path = save_torchscript(spec.build().eval(), spec.meta().replace(weights="random"), tmp_path / "m.torchscript")
    image = make_image(tmp_path / "a.png")
    with pytest.raises(ModuleRequiredError, match="'explain' needs the PyTorch model"):
        explain(path, [image], tmp_path / "out")
    code, _, stderr = run_cli(capsys, "explain", str(path), str(image), "-o", str(tmp_path / "out"))
    assert code == 2 and "error: 'explain' needs the PyTorch model" in stderr


UNICODE_LABELS = tuple(f"猫 {i} 100%" for i in range(10))  # not Latin-1, as HTTP headers are, and with a '%'


def unicode_labelled_model(path: Path) -> Path:
    """A cifar_resnet20 file (random weights) whose classes are UNICODE_LABELS."""
    from resnetkit.core.artifacts import save_artifact
    from resnetkit.core.zoo import get_spec

    spec = get_spec("cifar_resnet20")
    return save_artifact(path, spec.build().eval(), spec.meta().replace(weights="random", categories=UNICODE_LABELS))


@pytest.fixture(scope="module")
def client(cifar_weights, tmp_path_factory):
    from resnetkit.backends.torchscript import save_torchscript
    from resnetkit.core.zoo import get_spec
    from resnetkit.serve import ServeSettings
    from resnetkit.serve.app import create_app

    spec = get_spec("cifar_resnet20")
    script = save_torchscript(spec.build().eval(), spec.meta().replace(weights="random"),
                              tmp_path_factory.mktemp("explain") / "ts.torchscript")
    named = unicode_labelled_model(tmp_path_factory.mktemp("explain") / "named.pt")
    settings = ServeSettings(models=("cifar_resnet20", f"scripted={script}", f"named={named}"), max_batch_size=4)
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 120
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").json()
            time.sleep(0.2)
        yield client


@pytest.mark.slow
def test_explanations_route_returns_the_top_class_heatmap(client, cifar_test_dir):
    image = first_image(cifar_test_dir / "horse")
    [expected] = classify("cifar_resnet20", [image], top_k=2)
    response = client.post("/explanations/cifar_resnet20", content=image.read_bytes())
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.headers["x-label"] == expected.predictions[0].label
    png = Image.open(io.BytesIO(response.content))
    assert png.size == (32, 32) and png.text["label"] == expected.predictions[0].label
    both = client.post("/explanations/cifar_resnet20?format=json&top_k=2", files={"data": image.read_bytes()}).json()
    assert [h["label"] for h in both["heatmaps"]] == [p.label for p in expected.predictions]
    assert Image.open(io.BytesIO(base64.b64decode(both["heatmaps"][1]["png_base64"]))).size == (32, 32)


@pytest.mark.slow
def test_a_label_in_any_script_comes_back_percent_encoded(client, tmp_path):
    image = make_image(tmp_path / "a.png").read_bytes()
    response = client.post("/explanations/named", content=image)  # was a 500: UnicodeEncodeError in the header
    assert response.status_code == 200 and response.headers["x-label"].isascii()
    [top] = client.post("/explanations/named?format=json", content=image).json()["heatmaps"]
    assert top["label"] in UNICODE_LABELS and unquote(response.headers["x-label"]) == top["label"]


@pytest.mark.slow
def test_explanations_route_errors(client):
    bad = client.post("/explanations/cifar_resnet20", content=b"not an image")
    assert bad.status_code == 422 and "not an image format" in bad.json()["message"]  # TorchServe's shape
    scripted = client.post("/explanations/scripted", content=b"x")
    assert scripted.status_code == 501 and scripted.json()["type"] == "NotImplementedException"
    assert "needs the PyTorch model" in scripted.json()["message"]
    assert client.post("/explanations/nope", content=b"x").status_code == 404


@pytest.mark.slow
def test_web_page_shows_the_heatmap_on_request(cifar_weights, cifar_test_dir, tmp_path):
    from test_serve_browser import CHROMIUM, CHROMIUM_ARGS  # the browser set-up of the page's own test

    from resnetkit.serve import ServerThread, ServeSettings

    if not CHROMIUM.exists():
        pytest.skip("chromium is not installed")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
    image = first_image(cifar_test_dir / "cat")
    [expected] = classify("cifar_resnet20", [image], top_k=1)
    named = unicode_labelled_model(tmp_path / "named.pt")
    server = ServerThread(ServeSettings(models=("cifar_resnet20", f"named={named}"), port=0, access_log=False,
                                        backend="eager")).start()
    try:
        server.wait_ready()
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(server.url)
            page.wait_for_selector("#model option[value='named']", state="attached")
            page.set_input_files("#files", [str(image)])  # classified by cifar_resnet20, the first model
            page.wait_for_selector(".card button.heatmap")
            page.select_option("#model", "named")  # the heatmap stays the card's model's
            card = page.locator(".card").last
            card.locator("button.heatmap").click()
            page.wait_for_function("[...document.querySelectorAll('.card button.heatmap')].at(-1)"
                                   ".textContent.startsWith('heatmap:')")
            label = expected.predictions[0].label
            assert card.locator("button.heatmap").inner_text() == f"heatmap: {label}"
            thumb = card.locator("img.thumb")
            assert thumb.get_attribute("alt") == f"heatmap of {label} over {image.name}"
            assert thumb.evaluate("img => img.naturalWidth") == 32
            page.set_input_files("#files", [str(image)])  # by 'named', whose labels the header percent-encodes
            newest = page.locator(".card").first
            newest.locator("button.heatmap").click()
            page.wait_for_function("document.querySelector('.card button.heatmap').textContent.startsWith('heatmap:')")
            assert newest.locator("button.heatmap").inner_text().removeprefix("heatmap: ") in UNICODE_LABELS
            browser.close()
    finally:
        server.stop()


@pytest.mark.gpu
def test_explanations_on_the_gpu_match_the_cpu(cifar_weights, cifar_test_dir, tmp_path):
    images = [first_image(cifar_test_dir / c) for c in ("airplane", "cat", "dog", "frog", "horse", "ship", "truck")]
    cpu = explain("cifar_resnet20", images, tmp_path / "cpu", top_k=1, device="cpu")
    gpu = explain("cifar_resnet20", images, tmp_path / "gpu", top_k=1, device="cuda")
    assert gpu.ran.device.is_cuda and gpu.ran.precision == "fp32"
    labels = [[r.heatmaps[0].label for r in report.results] for report in (cpu, gpu)]
    assert sum(a == b for a, b in zip(*labels)) >= len(images) - 1
    for a, b in zip(cpu.results, gpu.results):
        if a.heatmaps[0].label == b.heatmaps[0].label:  # the same class's heatmap: the same picture, within rounding
            pixels = [np.asarray(Image.open(r.heatmaps[0].path), dtype=np.float32) for r in (a, b)]
            assert np.abs(pixels[0] - pixels[1]).mean() < 2
