"""Edge exports: LiteRT (TFLite) fp32/fp16/int8, ExecuTorch fp32/int8, Core ML (checked without predictions off
macOS) and fp16 ONNX; each file is run back with its own runtime and compared with the source model."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest

from resnetkit import load_model
from resnetkit.core.errors import UnknownModelError
from resnetkit.shrink.export import export_model

from conftest import CIFAR_TEST, CIFAR_TRAIN, HYMENOPTERA, eager_source, require, run_cli

pytest.importorskip("litert_torch", reason="the edge extra is not installed: pip install 'resnetkit[edge]'")
pytest.importorskip("executorch", reason="the edge extra is not installed: pip install 'resnetkit[edge]'")


def test_backends_lists_the_edge_runtimes_and_what_they_write() -> None:
    rows = {r["backend"]: r for r in json.loads(run_cli("backends", "--json").stdout)}
    assert rows["litert"]["reads"] == [".tflite"] and rows["litert"]["exports"] == [{"format": "litert", "suffix": ".tflite"}]
    assert rows["executorch"]["reads"] == [".pte"] and rows["executorch"]["available"]
    assert rows["coreml"]["reads"] == [".mlpackage"]
    if platform.system() != "Darwin":
        assert "cannot run them" in rows["coreml"]["remark"]


@pytest.mark.parametrize(("args", "message"), [
    (("--format", "litert", "--precision", "int8", "-o", "m.tflite"), "int8 needs calibration images: --calib DIR"),
    (("--format", "onnx", "--precision", "int8", "-o", "m.onnx"),
     "--format onnx stores fp32, fp16, not int8. int8 files: --format executorch or litert"),
    (("--format", "executorch", "--precision", "fp16", "-o", "m.pte"), "--format executorch stores fp32, int8, not fp16"),
    (("--format", "litert", "-o", "m.onnx"), "litert files end in .tflite: use -o m.tflite"),
])
def test_bad_edge_requests_are_refused_before_loading(args: tuple[str, ...], message: str) -> None:
    result = run_cli("export", "resnet152", "--random-weights", *args)
    assert result.returncode != 0
    assert message in result.stderr.replace("\n", " ")


def test_without_the_extra_the_error_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "litert_torch" else real(name, *a))
    result = run_cli("export", "cifar_resnet20", "--random-weights", "--format", "litert", "-o", "m.tflite")
    assert result.returncode != 0
    assert "Backend 'litert' is not available on this machine. Install it with: pip install 'resnetkit[edge]'" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(("fmt", "suffix", "precision"), [("litert", ".tflite", "fp32"), ("litert", ".tflite", "fp16"),
                                                         ("executorch", ".pte", "fp32"), ("onnx", ".onnx", "fp16")])
def test_float_edge_files_carry_metadata_and_match_eager(tmp_path: Path, fmt: str, suffix: str, precision: str) -> None:
    report = export_model(eager_source("cifar_resnet20", pretrained=False), fmt, tmp_path / f"r20{suffix}",
                          precision=precision, check_images=16)
    assert report.agreement.top1_agreement == 100.0
    assert report.agreement.max_abs_diff < (1e-4 if precision == "fp32" else 0.05)
    assert report.precision == precision and report.stored_precision == precision
    fp32_size = 1.1e6  # cifar_resnet20: 0.27 M parameters
    assert report.size_bytes < (0.6 if precision == "fp16" else 1.05) * fp32_size
    loaded = load_model(tmp_path / f"r20{suffix}")
    assert loaded.meta.categories[:2] == ("airplane", "automobile") and loaded.meta.precision == precision
    assert loaded.meta.preprocessing.mean == (0.485, 0.456, 0.406)
    assert [s.describe().split(" (")[0] for s in loaded.meta.provenance.recipe] == [f"export {fmt}"]
    assert (loaded.ran.backend, loaded.ran.precision) == ({"onnx": "onnxruntime"}.get(fmt, fmt), precision)


@pytest.fixture(scope="module")
def cifar_int8(tmp_path_factory: pytest.TempPathFactory, cifar_weights: Path) -> dict[str, Path]:
    """cifar_resnet20 (real weights) as LiteRT and ExecuTorch int8, calibrated on 300 training images."""
    require(CIFAR_TRAIN)
    folder = tmp_path_factory.mktemp("int8")
    files = {"litert": folder / "r20_int8.tflite", "executorch": folder / "r20_int8.pte"}
    for fmt, path in files.items():
        result = run_cli("export", "cifar_resnet20", "--format", fmt, "--precision", "int8", "--calib", CIFAR_TRAIN,
                         "--check-data", CIFAR_TEST, "-o", path)
        assert result.returncode == 0, result.stderr
        assert "calibrated on 300 images" in result.stdout
    return files


def _top1(model: str | Path) -> float:
    result = run_cli("evaluate", model, CIFAR_TEST, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["n_images"] == 10_000
    return report["top1"]


@pytest.mark.slow
def test_cifar_int8_files_stay_within_one_point_of_fp32_on_the_full_test_set(cifar_int8: dict[str, Path]) -> None:
    """The issue's must-hold, measured by 'resnetkit evaluate' on the files themselves (10,000 images)."""
    require(CIFAR_TEST)
    fp32 = _top1("cifar_resnet20")
    for fmt, path in cifar_int8.items():
        top1 = _top1(path)
        assert abs(top1 - fp32) <= 1.0, f"{fmt} int8 {top1:.2f} % vs fp32 {fp32:.2f} %"
        assert path.stat().st_size < 0.35e6  # int8 weights: under a third of fp32's 1.1 MB


@pytest.mark.slow
def test_int8_files_classify_with_their_own_runtime(cifar_int8: dict[str, Path]) -> None:
    image = require(CIFAR_TEST / "cat" / "0000.jpg")
    for fmt, path in cifar_int8.items():
        result = run_cli("classify", path, image, "-k", "1")
        assert result.returncode == 0, result.stderr
        assert f"{path.stem}: {fmt}/int8 on CPU" in result.stderr
        assert f"{image}: cat" in result.stdout


@pytest.mark.slow
def test_resnet18_litert_fp16_executorch_fp32_and_int8_size(tmp_path: Path) -> None:
    """resnet18 (random weights: ImageNet weights cannot be downloaded here) on the hymenoptera photos: fp16 LiteRT
    and fp32 ExecuTorch agree with the source on at least 99 % of them; the int8 LiteRT file is at most 12 MB."""
    photos = require(HYMENOPTERA / "val")
    source = eager_source("resnet18", pretrained=False)
    for fmt, precision, suffix in (("litert", "fp16", ".tflite"), ("executorch", "fp32", ".pte")):
        report = export_model(source, fmt, tmp_path / f"r18_{precision}{suffix}", precision=precision,
                              check_dir=photos, check_images=153)
        assert report.agreement.n_inputs == 153
        assert report.agreement.top1_agreement >= 99.0, (fmt, report.agreement.describe())
    report = export_model(source, "litert", tmp_path / "r18_int8.tflite", precision="int8",
                          calib_dir=HYMENOPTERA / "train", calib_size=64, check_images=8)
    assert report.size_bytes <= 12e6 and report.precision == "int8"


@pytest.mark.slow
def test_coreml_package_is_checked_without_predictions_off_macos(tmp_path: Path) -> None:
    pytest.importorskip("coremltools")
    result = run_cli("export", "cifar_resnet20", "--random-weights", "--format", "coreml", "-o", tmp_path / "r20.mlpackage",
                     "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["stored_precision"] == "fp16" and (tmp_path / "r20.mlpackage" / "Manifest.json").is_file()
    assert report["inspection"]["checks"] == "labels match: yes, normalization matches: yes, input size matches: yes"
    assert report["inspection"]["labels"] == "10 (airplane, automobile, bird, ...)"
    assert report["inspection"]["normalization in the graph"] == "mean [0.485, 0.456, 0.406], std [0.229, 0.224, 0.225]"
    if platform.system() != "Darwin":
        assert report["agreement"] is None and report["latency_ms"] is None
        assert report["notes"][0] == "predictions were not run: Core ML predictions need macOS or iOS; this machine runs Linux"
        refused = run_cli("classify", tmp_path / "r20.mlpackage", "x.jpg")
        assert refused.returncode != 0 and "r20.mlpackage is a Core ML package" in refused.stderr


@pytest.mark.slow
def test_an_edge_file_without_metadata_is_refused(tmp_path: Path) -> None:
    from resnetkit.backends.base import ExportSettings
    from resnetkit.backends.litert import to_litert

    source = eager_source("cifar_resnet20", pretrained=False)
    path = tmp_path / "plain.tflite"
    path.write_bytes(to_litert(source.module, source.meta, ExportSettings()))
    with pytest.raises(UnknownModelError, match="plain.tflite is a LiteRT model without resnetkit metadata"):
        load_model(path)
    (tmp_path / "odd.tflite").write_bytes(b"\0" * 16)
    with pytest.raises(UnknownModelError, match="odd.tflite is not a LiteRT"):
        load_model(tmp_path / "odd.tflite")
