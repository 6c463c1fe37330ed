"""Hugging Face transformers folders and timm checkpoints, checked against transformers and timm themselves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from resnetkit import classify, load_model
from resnetkit.core.errors import UnknownModelError, WeightsError
from resnetkit.core.spec import RANDOM_WEIGHTS
from resnetkit.interop import hf, timm as timm_interop

from conftest import make_image, run_cli

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")
safetensors_torch = pytest.importorskip("safetensors.torch")

LABELS = {0: "ants", 1: "bees", 2: "wasps"}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "resnetkit", *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=600)


def _hf_resnet(layer_type: str = "basic", depths=(2, 2, 2, 2), **config):
    widths = [64, 128, 256, 512] if layer_type == "basic" else [256, 512, 1024, 2048]
    cfg = transformers.ResNetConfig(layer_type=layer_type, depths=list(depths), hidden_sizes=widths, num_labels=3,
                                    id2label=LABELS, label2id={v: k for k, v in LABELS.items()}, **config)
    return transformers.ResNetForImageClassification(cfg).eval()


def _processor():
    return transformers.ConvNextImageProcessor(size={"shortest_edge": 224}, crop_pct=0.875, resample=3,
                                               image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    """A random ResNet-18-like transformers model saved with save_pretrained, plus its image processor."""
    folder = tmp_path_factory.mktemp("hf") / "tiny-resnet"
    torch.manual_seed(0)
    _hf_resnet().save_pretrained(folder)
    _processor().save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_hf_folder_logits_equal_transformers(hf_folder):
    model = load_model(hf_folder, backend="eager")  # exact fp32, to compare logits
    reference = transformers.AutoModelForImageClassification.from_pretrained(hf_folder).eval()
    x = torch.randn(2, 3, 64, 64)  # a tiny image is enough to compare the networks
    with torch.no_grad():
        expected = reference(pixel_values=x).logits
    assert torch.allclose(model.logits(x), expected, atol=1e-4)
    assert model.meta.arch == "resnet18" and model.meta.categories == ("ants", "bees", "wasps")
    prep = model.meta.preprocessing
    assert (prep.resize_size, prep.crop_size, prep.interpolation) == (256, 224, "bicubic")
    assert prep.mean == pytest.approx((0.485, 0.456, 0.406)) and prep.std == pytest.approx((0.229, 0.224, 0.225))


@pytest.mark.slow  # a ResNet-50 built twice
def test_bottleneck_and_bin_weights_map_too(tmp_path):
    reference = _hf_resnet("bottleneck", (3, 4, 6, 3))
    folder = tmp_path / "r50"
    reference.config.save_pretrained(folder)  # pytorch_model.bin, as older transformers versions wrote it
    torch.save(reference.state_dict(), folder / hf.PYTORCH_BIN)
    model = load_model(folder, backend="eager")  # exact fp32, to compare logits
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.logits(x), reference(pixel_values=x).logits, atol=1e-4)
    assert model.meta.arch == "resnet50"
    assert model.meta.preprocessing == load_model("resnet50", pretrained=False).meta.preprocessing  # no processor config


@pytest.mark.slow
def test_top1_equals_transformers_pipeline_on_real_photos(hymenoptera_dir, tmp_path):
    """A nearest-centroid head on real ant and bee photos, so predictions differ between photos."""
    torch.manual_seed(0)
    model, processor = _hf_resnet(), _processor()
    train = {label: sorted((hymenoptera_dir / "train" / label).glob("*.jpg"))[:8] for label in ("ants", "bees")}
    with torch.no_grad():
        centroids = [model.resnet(**processor([Image.open(p).convert("RGB") for p in paths], return_tensors="pt"))
                     .pooler_output.flatten(1).mean(0) for paths in train.values()]
        centroids = torch.stack(centroids + [torch.zeros_like(centroids[0])])  # "wasps": never the nearest
        model.classifier[1].weight.copy_(50 * (centroids - centroids[:2].mean(0)))
        model.classifier[1].bias.zero_()
    folder = tmp_path / "centroids"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    photos = sorted((hymenoptera_dir / "val").glob("*/*.jpg"))[::6]
    pipe = transformers.pipeline("image-classification", model=str(folder), device="cpu")
    expected = [result[0]["label"] for result in pipe([str(p) for p in photos], top_k=1)]
    ours = [r.predictions[0].label for r in classify(load_model(folder, backend="eager"), photos, top_k=1)]
    assert ours == expected
    assert {"ants", "bees"} <= set(ours)  # the check means something: both classes occur


def test_hf_config_that_torchvision_cannot_run_is_refused(tmp_path):
    folder = tmp_path / "odd"
    _hf_resnet(downsample_in_bottleneck=True, layer_type="bottleneck", depths=(3, 4, 6, 3)).save_pretrained(folder)
    with pytest.raises(UnknownModelError, match="downsample_in_bottleneck=True"):
        load_model(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnknownModelError, match="not a Hugging Face model folder"):
        load_model(tmp_path / "empty")


def test_hf_folder_with_torchvision_names_says_how_to_load_them(tmp_path):
    folder = tmp_path / "tv-names"
    _hf_resnet().config.save_pretrained(folder)
    torch.save(load_model("resnet18", pretrained=False).module.state_dict(), folder / hf.PYTORCH_BIN)
    with pytest.raises(WeightsError, match="torchvision parameter names") as info:
        load_model(folder)
    assert "transformers (Hugging Face) names" in str(info.value) and "--weights FILE" in str(info.value)


def test_hf_folder_keeps_the_random_weights_flag(tmp_path):
    source = load_model("resnet18", pretrained=False, backend="eager")
    hf.save_folder(source.module, source.meta, tmp_path / "random")
    assert load_model(tmp_path / "random").meta.weights == RANDOM_WEIGHTS
    shown = run_cli("classify", tmp_path / "random", make_image(tmp_path / "x.png"), "--backend", "eager")
    assert shown.returncode == 0 and "random weights: labels are meaningless" in shown.stderr
    # weights saved again by transformers (e.g. after fine-tuning there) are no longer resnetkit's random ones
    transformers.AutoModelForImageClassification.from_pretrained(tmp_path / "random").save_pretrained(tmp_path / "tuned")
    assert load_model(tmp_path / "tuned").meta.weights == str(tmp_path / "tuned")
    hf.save_folder(source.module, source.meta.replace(weights="IMAGENET1K_V1"), tmp_path / "trained")
    assert load_model(tmp_path / "trained").meta.weights == str(tmp_path / "trained")


def test_parameter_names_round_trip():
    state = load_model("resnet34", pretrained=False).module.state_dict()
    renamed = hf.torchvision_to_hf(state)
    assert "resnet.encoder.stages.1.layers.0.shortcut.convolution.weight" in renamed
    assert hf.hf_to_torchvision(renamed).keys() == state.keys()


@pytest.mark.slow  # an export with its check, then transformers loading the folder
def test_export_hf_folder_loads_in_transformers_with_equal_logits(tmp_path):
    out = tmp_path / "resnet18-hf"
    result = _cli("export", "resnet18", "--random-weights", "--format", "hf", "-o", str(out), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["agreement"]["top1_agreement"] == 100.0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    loaded = transformers.AutoModelForImageClassification.from_pretrained(out).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(out)
    ours = load_model(out, backend="eager")
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(loaded(pixel_values=x).logits, ours.logits(x), atol=1e-4)
    assert loaded.config.id2label[0] == "tench" and loaded.config.num_labels == 1000
    assert processor.size["shortest_edge"] == 224 and int(224 / processor.crop_pct) == 256


def test_processor_config_round_trip_keeps_resize_sizes():
    for prep in (load_model("resnet50", pretrained=False).meta.preprocessing,
                 load_model("resnet50", weights="IMAGENET1K_V2", pretrained=False).meta.preprocessing):
        assert hf.preprocessing_from_processor(hf.processor_config(prep), "test") == prep


def test_export_hf_refuses_non_resnets():
    with pytest.raises(UnknownModelError, match="Only torchvision ResNets"):
        hf.hf_config("cifar_resnet20", ("a",))


# --- timm ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def timm_model():
    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False).eval()


@pytest.mark.slow
def test_timm_import_logits_equal_and_preprocessing_matches_timm(timm_model, hymenoptera_dir, tmp_path):
    weights = tmp_path / "resnet18.a1_in1k.safetensors"
    safetensors_torch.save_file(timm_model.state_dict(), weights)
    path, prep = timm_interop.import_checkpoint("resnet18", weights, "timm:crop_pct=0.95,interpolation=bicubic")
    assert path == tmp_path / "resnet18.a1_in1k.pt"
    model = load_model(path, backend="eager")  # exact fp32, to compare logits
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(model.logits(x), timm_model(x), atol=1e-4)
    config = timm.data.resolve_data_config({}, model=timm_model)  # timm's own: a1_in1k's crop_pct 0.95, bicubic
    reference = timm.data.create_transform(**config)
    photo = Image.open(sorted((hymenoptera_dir / "val" / "bees").glob("*.jpg"))[0]).convert("RGB")
    assert torch.allclose(model.transform(photo), reference(photo), atol=1e-5)
    assert (prep.resize_size, prep.crop_size, prep.interpolation) == (235, 224, "bicubic")
    assert model.meta.categories[0] == "tench" and model.meta.metrics.top1 is None  # torchvision's figures don't apply


def test_timm_sidecar_config_sets_the_preprocessing(timm_model, tmp_path):
    safetensors_torch.save_file(timm_model.state_dict(), tmp_path / "model.safetensors")
    cfg = {**timm_model.pretrained_cfg, "crop_pct": 0.9, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "resnet18.custom", "pretrained_cfg": cfg}))
    _, prep = timm_interop.import_checkpoint("resnet18", tmp_path / "model.safetensors", output=tmp_path / "m.pt")
    assert (prep.resize_size, prep.interpolation, prep.mean) == (248, "bicubic", (0.5, 0.5, 0.5))
    _, prep = timm_interop.import_checkpoint("resnet18", tmp_path / "model.safetensors", "timm:crop_pct=1.0",
                                             output=tmp_path / "m.pt")  # the option wins over the sidecar
    assert (prep.resize_size, prep.interpolation) == (224, "bicubic")


@pytest.mark.parametrize("text, message", [
    ("timm:crop_pct=abc", "not a number"),
    ("tf:crop_pct=0.9", "only timm's settings"),
    ("timm:scale=2", "unknown setting"),
])
def test_bad_preprocessing_option_says_how_to_write_it(text, message):
    with pytest.raises(WeightsError, match=message):
        timm_interop.parse_preprocessing(text)


@pytest.mark.parametrize("text, message", [
    ("timm:input_size=0", "input_size 0x0 .a positive number"),
    ("timm:input_size=3,-4,-4", "input_size -4x-4 .a positive number"),
    ("timm:crop_pct=0", r"crop_pct 0 .a value in \(0, 1\]"),
])
def test_impossible_timm_sizes_are_refused_and_nothing_is_written(timm_model, tmp_path, text, message):
    safetensors_torch.save_file(timm_model.state_dict(), tmp_path / "r18.safetensors")
    with pytest.raises(WeightsError, match=message):
        timm_interop.import_checkpoint("resnet18", tmp_path / "r18.safetensors", text, output=tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()


def test_parse_preprocessing_reads_lists():
    assert timm_interop.parse_preprocessing("timm:mean=0.5,0.4,0.3,std=0.2,0.2,0.2,input_size=3,256,256") == {
        "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.2, 0.2), "input_size": (3, 256, 256)}


@pytest.mark.slow  # a CLI process
def test_cli_weights_import_timm_and_wrong_architecture(timm_model, tmp_path):
    weights = tmp_path / "r18.safetensors"
    safetensors_torch.save_file(timm_model.state_dict(), weights)
    ok = _cli("weights", "import", "resnet18", str(weights), "--preprocessing", "timm:crop_pct=0.95,interpolation=bicubic",
              "-o", str(tmp_path / "r18.pt"))
    assert ok.returncode == 0, ok.stderr
    assert "resize 235 (bicubic), center-crop 224" in ok.stdout and (tmp_path / "r18.pt").is_file()
    wrong = _cli("weights", "import", "resnet50", str(weights))
    assert wrong.returncode == 2 and "does not fit resnet50" in wrong.stderr and "Traceback" not in wrong.stderr
