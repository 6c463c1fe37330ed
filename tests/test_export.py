"""Export formats: numerical agreement with eager, metadata round-trip, onnx.checker, bad input."""

from __future__ import annotations

from pathlib import Path

import re
import pytest
import torch

from resnetkit import load_model

from resnetkit.shrink import compare
from resnetkit.core.errors import BackendUnavailableError, ResnetkitError, UnknownModelError
from resnetkit.shrink.export import export_model
from resnetkit.run.classify import classify
from resnetkit.backends.base import RunnerOptions

from conftest import eager_source, make_image


@pytest.fixture(autouse=True)
def fast_latency(monkeypatch: pytest.MonkeyPatch) -> None:
    from resnetkit.backends import auto

    monkeypatch.setattr(compare, "LATENCY_SECONDS", 0.05)
    monkeypatch.setattr(auto, "TRIAL_SECONDS", 0.05)


@pytest.mark.slow
@pytest.mark.parametrize("fmt,suffix", [("onnx", ".onnx"), ("openvino", ".xml"), ("torchscript", ".torchscript")])
def test_export_matches_eager_and_keeps_metadata(tmp_path: Path, fmt: str, suffix: str) -> None:
    source = eager_source("cifar_resnet20", pretrained=False)
    report = export_model(source, fmt, tmp_path / f"m{suffix}", dynamic_batch=True,
                          check_images=16)
    assert report.agreement.top1_agreement == 100.0
    assert report.agreement.max_abs_diff < 1e-3
    assert report.precision == "fp32" and report.size_bytes > 0
    # a speed-up only from latencies measured interleaved on a quiet machine; otherwise it says why not
    assert re.fullmatch(r"\d+\.\d\dx (faster|slower)|(not comparable: machine busy|within noise) \(.+\)",
                        report.speedup), report.speedup
    assert report.backend == {"onnx": "onnxruntime", "openvino": "openvino", "torchscript": "torchscript"}[fmt]
    loaded = load_model(report.path)
    eager = source
    assert loaded.meta.categories == eager.meta.categories
    assert loaded.meta.preprocessing == eager.meta.preprocessing
    assert (loaded.meta.name, loaded.meta.arch, loaded.meta.format) == ("m", "cifar_resnet20", fmt)
    assert loaded.meta.provenance.source == "cifar_resnet20"
    images = [make_image(tmp_path / f"img{i}.png", size=(40, 40), seed=i) for i in range(3)]
    exported_results, eager_results = classify(loaded, images, top_k=3), classify(eager, images, top_k=3)
    for got, want in zip(exported_results, eager_results):
        assert [p.label for p in got.predictions] == [p.label for p in want.predictions]
        assert [p.score for p in got.predictions] == pytest.approx([p.score for p in want.predictions], abs=1e-4)


def test_onnx_passes_checker_and_fixed_batch(tmp_path: Path) -> None:
    import onnx

    report = export_model(eager_source("cifar_resnet20", pretrained=False), "onnx", tmp_path / "m.onnx", batch_size=2,
                          check_images=8, opset=20)
    assert report.onnx_checker == "passed"
    model = onnx.load(report.path)
    onnx.checker.check_model(model)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    assert any(o.version == 20 for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert report.agreement.n_inputs == 8
    method = report.to_dict()["latency_method"]  # how the latencies were measured, in the JSON too
    assert method["batch_size"] == 2 and method["warmup"] == 3 and set(method["runs"]) == {"eager", "onnxruntime"}
    # Batches of another size run in slices of the fixed size: 5 images = 3 slices, the last one padded.
    fixed = load_model(report.path)
    batch = torch.randn(5, 3, 32, 32)
    logits = fixed.logits(batch)
    exact_size = torch.cat([fixed.logits(batch[0:2]), fixed.logits(batch[2:4]), fixed.logits(batch[[4, 0]])[:1]])
    assert logits.shape == (5, 10) and torch.allclose(logits, exact_size, atol=1e-5)


@pytest.mark.slow
def test_onnx_artifact_runs_on_openvino_and_auto(tmp_path: Path) -> None:
    path = export_model(eager_source("cifar_resnet20", pretrained=False), "onnx", tmp_path / "m.onnx", dynamic_batch=True,
                        check_images=4).path
    batch = torch.randn(3, 3, 32, 32)
    expected = load_model(path).logits(batch)
    openvino = load_model(path, backend="openvino")
    assert openvino.runner.precision == "fp32"  # the export records fp32; OpenVINO is told so
    assert torch.allclose(openvino.logits(batch), expected, atol=1e-3)
    auto = load_model(path, backend="auto")
    assert auto.ran.chosen_by_auto and auto.ran.backend in ("onnxruntime", "openvino")


def test_exported_files_refuse_backends_and_precisions_they_cannot_run(tmp_path: Path) -> None:
    path = export_model(eager_source("cifar_resnet20", pretrained=False), "onnx", tmp_path / "m.onnx", check_images=4).path
    assert load_model(path).runner.backend == "onnxruntime"  # no --backend: the file's own runtime
    with pytest.raises(BackendUnavailableError, match="m.onnx is an ONNX graph; the eager backend cannot run it"):
        load_model(path, backend="eager")
    with pytest.raises(BackendUnavailableError, match="m.onnx computes in fp32 as stored, not bf16"):
        load_model(path, options=RunnerOptions(precision="bf16"))


def test_bad_export_requests(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match="Unknown export format"):
        export_model(eager_source("cifar_resnet20", pretrained=False), "tflite", tmp_path / "m.tflite")
    with pytest.raises(ResnetkitError, match=r"--opset 11 is not one torch.onnx .* writes: use an opset from 18 to 23"):
        export_model(eager_source("cifar_resnet20", pretrained=False), "onnx", tmp_path / "m.onnx", opset=11)
    with pytest.raises(ResnetkitError, match=r"\.xml"):
        export_model(eager_source("cifar_resnet20", pretrained=False), "openvino", tmp_path / "m.onnx")


def test_onnx_without_metadata_is_refused(tmp_path: Path) -> None:
    from resnetkit.core.zoo import get_spec

    path = tmp_path / "plain.onnx"
    torch.onnx.export(get_spec("cifar_resnet20").build().eval(), (torch.zeros(1, 3, 32, 32),), str(path),
                      dynamo=True, external_data=False)
    with pytest.raises(UnknownModelError, match="without resnetkit metadata"):
        load_model(path)



def test_outputs_and_options_are_checked_before_any_work(tmp_path: Path) -> None:
    from resnetkit.core.errors import OutputError
    from resnetkit.shrink.export import check_export_request

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(OutputError, match=f"Cannot write {blocker / 'm.onnx'}"):
        check_export_request("onnx", blocker / "m.onnx")
    with pytest.raises(ResnetkitError, match=r"^--opset 99 is not one torch.onnx .* writes: use an opset from 18 to "):
        check_export_request("onnx", tmp_path / "m.onnx", opset=99)
    mixed = tmp_path / "mixed"
    (mixed / "notes.txt").parent.mkdir()
    (mixed / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"mixed already holds other files \(notes.txt\); --format hf writes"):
        check_export_request("hf", mixed)
    (tmp_path / "previous").mkdir()
    (tmp_path / "previous" / "config.json").write_text("{}")
    check_export_request("hf", tmp_path / "previous")  # a previous hf export is overwritten


def test_a_failed_check_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from resnetkit.core.errors import DatasetError

    unlabelled = tmp_path / "eval"
    make_image(unlabelled / "not-a-class" / "0.png", size=(32, 32))
    source = eager_source("cifar_resnet20", pretrained=False)
    for folders in ({"check_dir": tmp_path / "nope"}, {"eval_dir": unlabelled}):
        with pytest.raises(DatasetError, match="No such folder|match no class"):
            export_model(source, "openvino", tmp_path / "m.xml", check_images=4, **folders)
        assert not (tmp_path / "m.xml").exists() and not (tmp_path / "m.bin").exists()
    export_module = sys.modules[export_model.__module__]  # a failure once the file is written removes it
    monkeypatch.setattr(export_module, "load_model", lambda *a, **k: (_ for _ in ()).throw(DatasetError("late")))
    with pytest.raises(DatasetError, match="late"):
        export_model(source, "openvino", tmp_path / "m.xml", check_images=4)
    assert not (tmp_path / "m.xml").exists() and not (tmp_path / "m.bin").exists()


def test_exporting_an_exported_file_says_what_to_give_instead(tmp_path: Path) -> None:
    from resnetkit.backends.base import ExportSettings, export_formats

    from conftest import run_cli

    source = eager_source("cifar_resnet20", pretrained=False)
    onnx_file = tmp_path / "r20.onnx"
    export_formats()["onnx"][1].export.write(source.module, source.meta, onnx_file, ExportSettings())
    result = run_cli("export", onnx_file, "--format", "openvino", "-o", tmp_path / "f.xml")
    assert result.returncode == 2 and "--backend" not in result.stderr
    assert "Use the zoo name (cifar_resnet20) or the .pt model it was exported from" in result.stderr
