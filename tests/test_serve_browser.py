"""End to end in a real browser: headless Chromium loads the page, uploads a CIFAR-10 test image
and shows the predicted label (as `resnetkit classify` gives it) with bars, what ran it and the server
latency; on a phone-width screen the thumbnail sits beside its bars and nothing overflows."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from resnetkit.run.loading import load_model
from resnetkit.run.classify import classify
from resnetkit.serve import ServerThread, ServeSettings

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists() and not shutil.which("chromium"):
        pytest.skip("chromium is not installed (apt-get install chromium chromium-driver; scripts/test.sh does it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server_url(cifar_weights):
    # pinned to eager so the page can be checked for the runtime it names (the default, auto, depends on the CPU)
    server = ServerThread(ServeSettings(models=("cifar_resnet20",), port=0, access_log=False, backend="eager")).start()
    try:
        server.wait_ready()
        yield server.url
    finally:
        server.stop()


@pytest.mark.slow
def test_upload_an_image_and_see_its_label(browser, server_url, cifar_test_dir, tmp_path):
    images = [sorted((cifar_test_dir / name).glob("*.jpg"))[i] for i, name in enumerate(("cat", "ship"))]
    expected = [r.predictions[0].label for r in classify(load_model("cifar_resnet20"), images, top_k=3)]
    page = browser.new_page(viewport={"width": 1000, "height": 640})
    page.goto(server_url)
    page.wait_for_selector("#model option[value='cifar_resnet20']", state="attached")
    page.select_option("#topk", "3")
    page.set_input_files("#files", [str(p) for p in images])
    page.wait_for_function("document.querySelectorAll('.card .bar.top').length === 2")
    page.set_input_files("#files", {"name": "notes.txt", "mimeType": "image/png", "buffer": b"not an image"})
    page.wait_for_selector(".card .error")
    cards = page.locator(".card")
    shown = {cards.nth(i).locator(".name").inner_text(): cards.nth(i) for i in range(3)}
    for path, label in zip(images, expected):
        card = shown[path.name]
        assert card.locator(".bar.top .label").inner_text() == label
        assert card.locator(".bar").count() == 3 and "%" in card.locator(".bar.top .pct").inner_text()
        assert card.locator(".latency").inner_text().startswith("cifar_resnet20 on eager/fp32 · server ")
    assert "not an image format" in shown["notes.txt"].locator(".error").inner_text()
    assert page.locator("#token-field").is_hidden() and page.locator("#banner").is_hidden()
    assert page.locator("#weights-note").is_hidden()  # trained weights: no warning
    assert "runs eager/fp32 on CPU" in page.locator("#model-info").inner_text()  # where the model runs
    assert ("top-1 91.73 % on CIFAR-10 test (original images) for fp32, published by github.com/akamaster/pytorch_resnet_cifar10 "
            "README (not measured here)") in page.locator("#model-info").inner_text()  # whose figure it is
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)


def test_random_weights_are_announced_on_the_page(browser, tmp_path):
    server = ServerThread(ServeSettings(models=("cifar_resnet20",), port=0, access_log=False, backend="eager",
                                        random_weights=True, threads=1, workers=1)).start()
    try:
        server.wait_ready()
        page = browser.new_page(viewport={"width": 1000, "height": 640})
        page.goto(server.url)
        page.wait_for_selector("#weights-note", state="visible")
        assert "its labels are meaningless" in page.locator("#weights-note").inner_text()
        assert "weights random" in page.locator("#model-info").inner_text()
        page.screenshot(path=str(tmp_path / "random.png"), full_page=True)
    finally:
        server.stop()


def test_phone_width_shows_each_thumbnail_beside_its_bars(browser, server_url, cifar_test_dir, tmp_path):
    images = [sorted((cifar_test_dir / name).glob("*.jpg"))[0] for name in ("dog", "frog", "truck")]
    page = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True)
    page.goto(server_url)
    page.wait_for_selector("#model option[value='cifar_resnet20']", state="attached")
    page.set_input_files("#files", [str(p) for p in images])
    page.wait_for_function("document.querySelectorAll('.card .bar.top').length === 3")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling
    assert "eager/fp32" in page.locator("#model-info").inner_text()
    for i in range(3):
        card = page.locator(".card").nth(i)
        thumb, bars = card.locator("img.thumb").bounding_box(), card.locator(".bar").first.bounding_box()
        assert page.evaluate("(img) => img.complete && img.naturalWidth", card.locator("img.thumb").element_handle()) == 32
        assert thumb["x"] + thumb["width"] <= bars["x"] and bars["x"] + bars["width"] <= 390
        assert abs(thumb["y"] - card.bounding_box()["y"]) < 20  # beside the bars, not above them
    page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
