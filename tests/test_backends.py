"""Backends: same logits as eager, honest precision, auto's choice, clear errors."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from resnetkit import load_model

from resnetkit.backends import base as runners
from resnetkit.cli import app
from resnetkit.core.errors import BackendUnavailableError
from resnetkit.backends.base import RunnerOptions
from resnetkit.shrink.compare import image_batches

FP32 = RunnerOptions(precision="fp32")


@pytest.fixture(autouse=True)
def short_auto_trials(monkeypatch: pytest.MonkeyPatch) -> None:
    from resnetkit.backends import auto

    monkeypatch.setattr(auto, "TRIAL_SECONDS", 0.05)


@pytest.fixture(scope="module")
def eager():
    torch.manual_seed(0)
    return load_model("cifar_resnet20", pretrained=False, backend="eager")


def _same_weights(backend: str, options: RunnerOptions, eager):
    """A runner of ``backend`` for the very weights of ``eager``."""
    return runners.make_runner(copy.deepcopy(eager.module), eager.meta, backend, options)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_fp32_backends_match_eager(backend: str, eager) -> None:
    runner = _same_weights(backend, FP32, eager)
    assert runner.precision == "fp32"
    for batch_size in (1, 3):  # openvino compiles per batch size
        batch = torch.randn(batch_size, 3, 32, 32)
        assert torch.allclose(runner(batch), eager.logits(batch), atol=1e-3)


@pytest.mark.slow
def test_compile_backend_matches_eager(eager) -> None:
    runner = _same_weights("compile", FP32, eager)
    batch = torch.randn(2, 3, 32, 32)
    assert runner.backend == "compile"
    assert torch.allclose(runner(batch), eager.logits(batch), atol=1e-3)


def test_openvino_reports_the_precision_it_chose(eager) -> None:
    from resnetkit.backends.openvino import default_precision

    runner = _same_weights("openvino", RunnerOptions(), eager)
    assert runner.precision == default_precision()  # bf16 on CPUs with AVX512-BF16/AMX, else fp32


@pytest.mark.slow
def test_converted_models_are_cached_on_disk(eager, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from resnetkit.backends import common
    from resnetkit.backends import openvino as ov_backend

    monkeypatch.setenv("RESNETKIT_TUNING_CACHE", str(tmp_path / "tuning.json"))
    trained = dataclasses.replace(eager.meta, weights="my-weights")
    first = ov_backend.converted(eager.module, trained)
    [stored] = (tmp_path / "openvino-models").glob("*.xml")
    monkeypatch.setattr(ov_backend, "to_openvino", lambda *_: pytest.fail("converted again"))
    again = ov_backend.converted(eager.module, trained)
    batch = torch.randn(2, 3, 32, 32)
    runner = ov_backend.OpenVinoRunner(again, "fp32")
    assert torch.allclose(runner(batch), eager.logits(batch), atol=1e-3)
    assert ov_backend.read_meta(again, stored) == trained
    other = copy.deepcopy(eager.module)
    with torch.no_grad():
        other.linear.bias += 1.0  # other weights: another entry
    monkeypatch.undo()
    monkeypatch.setenv("RESNETKIT_TUNING_CACHE", str(tmp_path / "tuning.json"))
    monkeypatch.setattr(common, "CONVERTED_KEPT", 1)
    ov_backend.converted(other, trained)
    assert [p.name for p in (tmp_path / "openvino-models").glob("*.xml")] != [stored.name]  # the older one evicted
    assert len(list((tmp_path / "openvino-models").iterdir())) == 2  # one .xml + its .bin, no temp files
    assert first.get_parameters()[0].get_partial_shape().to_string() == "[?,3,32,32]"


def test_eviction_of_converted_models_tolerates_another_process_evicting(tmp_path, monkeypatch) -> None:
    """Two processes that convert models at once both evict: an entry the other one removed after this one listed
    the folder is skipped (it used to fail the caching with 'No such file'), the least recent of the rest go."""
    from pathlib import Path

    from resnetkit.backends import common

    for age, name in enumerate(["newest", "older", "oldest"]):
        for suffix in (".xml", ".bin"):
            (tmp_path / f"{name}{suffix}").write_text(name)
            os.utime(tmp_path / f"{name}{suffix}", (1e9 - age, 1e9 - age))
    listed = Path.glob
    monkeypatch.setattr(Path, "glob", lambda self, pattern: [*listed(self, pattern), self / "evicted-meanwhile.xml"])
    monkeypatch.setattr(common, "CONVERTED_KEPT", 2)
    common._evict_least_recent(tmp_path, (".xml", ".bin"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["newest.bin", "newest.xml", "older.bin", "older.xml"]


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores: one thread is then fewer than the cores")
def test_openvino_unpins_a_model_held_to_fewer_threads_than_the_cores(eager) -> None:
    """OpenVINO pins a model's threads to the first cores: two 1-thread processes (Ray actors) would share one core.
    A model given fewer threads than the cores runs unpinned; one left to OpenVINO keeps its default."""
    from resnetkit.backends import openvino as ov_backend

    model = ov_backend.converted(eager.module, eager.meta)
    one_thread = ov_backend.OpenVinoRunner(model, "fp32", threads=1)
    default = ov_backend.OpenVinoRunner(model, "fp32")
    assert one_thread.compiled(1).get_property("INFERENCE_NUM_THREADS") == 1
    assert one_thread.compiled(1).get_property("ENABLE_CPU_PINNING") is False
    assert "ENABLE_CPU_PINNING" not in default.config


@pytest.mark.slow
def test_exported_onnx_graphs_are_cached_on_disk(eager, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ONNX Runtime's runners (and OpenVINO's conversion) start from the exported ONNX graph: the next process
    that loads the same weights reads it back instead of exporting again."""
    from collections import OrderedDict

    from resnetkit.backends import common
    from resnetkit.backends import onnxruntime as ort_backend

    monkeypatch.setenv("RESNETKIT_TUNING_CACHE", str(tmp_path / "tuning.json"))
    monkeypatch.setattr(common, "_recent", OrderedDict())  # as in a new process: nothing converted in memory
    trained = dataclasses.replace(eager.meta, weights="my-weights")
    ort_backend.exported(eager.module, trained)
    [stored] = (tmp_path / "onnx-models").iterdir()
    common._recent.clear()
    monkeypatch.setattr(ort_backend, "traced_onnx", lambda *_: pytest.fail("exported again"))
    runner = runners.make_runner(copy.deepcopy(eager.module), trained, "onnxruntime", FP32)
    batch = torch.randn(2, 3, 32, 32)
    assert torch.allclose(runner(batch), eager.logits(batch), atol=1e-3)
    assert ort_backend.read_meta(runner.model, stored) == trained
    assert stored.suffix == ".onnx" and list((tmp_path / "onnx-models").iterdir()) == [stored]  # no temp files


def test_runtimes_get_a_traced_graph_unless_the_trace_would_depend_on_the_data(eager, monkeypatch) -> None:
    """The graph the runtimes share comes from torch's tracing exporter (a tenth of torch.export's time); a
    model whose trace would bake in one branch of data-dependent control flow goes to torch.export instead."""
    from torch import nn

    from resnetkit.backends import onnxruntime as ort_backend

    exported_by_torch_export = []
    monkeypatch.setattr(ort_backend, "to_onnx",
                        lambda module, meta: exported_by_torch_export.append(meta.name) or "torch.export's graph")
    traced = ort_backend.traced_onnx(eager.module, eager.meta)
    assert exported_by_torch_export == []
    assert [d.dim_param for d in traced.graph.input[0].type.tensor_type.shape.dim][0] == "batch"
    assert ort_backend.read_meta(traced, "traced") == eager.meta
    batch = torch.randn(3, 3, 32, 32)
    runner = ort_backend.OnnxRuntimeRunner(traced, "fp32")
    assert torch.allclose(runner(batch), eager.logits(batch), atol=1e-3)

    class Branchy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean((2, 3)) if x.sum() > 0 else -x.mean((2, 3))

    meta = dataclasses.replace(eager.meta, name="branchy")
    assert ort_backend.traced_onnx(Branchy(), meta) == "torch.export's graph"
    assert exported_by_torch_export == ["branchy"]


@pytest.mark.slow
def test_random_weights_are_cached_apart_and_never_push_real_models_out(eager, tmp_path, monkeypatch) -> None:
    from resnetkit.backends import common
    from resnetkit.backends import openvino as ov_backend

    monkeypatch.setenv("RESNETKIT_TUNING_CACHE", str(tmp_path / "tuning.json"))
    monkeypatch.setattr(common, "CONVERTED_KEPT", 1)
    ov_backend.converted(eager.module, dataclasses.replace(eager.meta, weights="my-weights"))
    for name in ("cifar_resnet20", "cifar_resnet32"):
        random = load_model(name, pretrained=False, backend="eager")
        ov_backend.converted(random.module, random.meta)
    assert len(list((tmp_path / "openvino-models").glob("*.xml"))) == 1  # the real model is still there
    [stored] = (tmp_path / "openvino-models" / "random-weights").glob("*.xml")  # cifar_resnet32 evicted resnet20
    monkeypatch.setattr(ov_backend, "to_openvino", lambda *_: pytest.fail("converted again"))
    again = load_model("cifar_resnet32", pretrained=False, backend="eager")  # the same random weights: from disk
    model = ov_backend.converted(again.module, again.meta)
    batch = torch.randn(2, 3, 32, 32)
    assert torch.allclose(ov_backend.OpenVinoRunner(model, "fp32")(batch), again.logits(batch), atol=1e-3)
    assert ov_backend.read_meta(model, stored) == again.meta


def test_openvino_runner_serves_several_threads_at_once(eager) -> None:
    """A threaded web server calls one runner from many threads: every call gets its own answer."""
    from concurrent.futures import ThreadPoolExecutor

    runner = _same_weights("openvino", FP32, eager)
    batches = [torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(24)]
    expected = [runner(batch) for batch in batches]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(runner, batches))
    assert all(torch.equal(got, want) for got, want in zip(answers, expected))


def test_onnxruntime_threads_stop_spinning_when_a_call_returns(eager) -> None:
    """By default ONNX Runtime's worker threads spin for tens of ms after each call, holding the cores that
    whatever runs next in the process needs (bench's eager reference ran 1.7x slower after it, and serve
    decodes images between calls): once a call returns, the process takes no CPU."""
    import time

    runner = _same_weights("onnxruntime", dataclasses.replace(FP32, threads=2), eager)
    batch = torch.randn(8, 3, 32, 32)
    for _ in range(3):
        runner(batch)
    before = time.process_time()
    time.sleep(0.3)
    assert time.process_time() - before < 0.01


def test_a_lazy_runner_is_built_once_when_threads_race_for_it() -> None:
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from resnetkit.run.loading import LazyRunner

    builds = []

    def build():
        builds.append(threading.get_ident())
        time.sleep(0.2)  # a slow build (auto tuning): every thread arrives while it runs
        return lambda batch: batch * 2

    lazy = LazyRunner(build)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lazy, [torch.full((1,), float(i)) for i in range(8)]))
    assert len(builds) == 1 and [a.item() for a in answers] == [2.0 * i for i in range(8)]


@pytest.mark.slow
def test_one_conversion_serves_runners_for_several_thread_counts(eager, monkeypatch: pytest.MonkeyPatch) -> None:
    """auto builds a runner per thread count from the same module: the graph is converted once."""
    from resnetkit.backends import openvino as ov_backend

    real, calls = ov_backend.to_openvino, []
    monkeypatch.setattr(ov_backend, "to_openvino", lambda *args: calls.append(1) or real(*args))
    module = copy.deepcopy(eager.module)
    with torch.no_grad():
        module.linear.bias += torch.rand(1).item() + 0.5  # weights no other test converted
    one, two = (runners.make_runner(module, eager.meta, "openvino", RunnerOptions(precision="fp32", threads=n))
                for n in (1, 2))
    batch = torch.randn(2, 3, 32, 32)
    assert len(calls) == 1 and torch.equal(one(batch), two(batch))
    with torch.no_grad():
        module.linear.bias += 1.0  # new weights: converted again, never served stale
    three = runners.make_runner(module, eager.meta, "openvino", FP32)
    assert len(calls) == 2 and not torch.allclose(three(batch), one(batch))


@pytest.mark.slow
def test_auto_candidates_share_one_export_read_from_its_file(eager, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """auto's ONNX Runtime and OpenVINO candidates get the module itself (they only read it; eager ones get copies),
    its weights are hashed once, and the runtimes read the exported graph from the cache's file instead of being
    handed it serialized again; a file deleted since is exported again, never read from a stale path."""
    from collections import OrderedDict

    from resnetkit.backends import auto, common
    from resnetkit.backends import onnxruntime as ort_backend
    from resnetkit.backends.tuning import Candidate

    monkeypatch.setenv("RESNETKIT_TUNING_CACHE", str(tmp_path / "tuning.json"))
    monkeypatch.setattr(common, "_recent", OrderedDict())
    module = copy.deepcopy(eager.module).eval()
    with torch.no_grad():
        module.linear.bias += 2.0  # weights no other test exported
    hashed, given = [], []
    monkeypatch.setattr(module, "state_dict", lambda *a, **k: hashed.append(sys._getframe(1).f_code.co_name)
                        or type(module).state_dict(module, *a, **k))
    make_runner = auto.make_runner
    monkeypatch.setattr(auto, "make_runner", lambda m, meta, name, options: given.append((name, m is module))
                        or make_runner(m, meta, name, options))
    tried = [Candidate(name, "fp32", threads) for name in ("eager", "onnxruntime", "openvino") for threads in (None, 1)]
    timings = auto.measure(auto.ModuleSource(module, eager.meta), tried, FP32, seconds=0.05)
    assert set(timings) == set(tried)
    assert given == [("eager", False), ("eager", False), ("onnxruntime", True), ("onnxruntime", True),
                     ("openvino", True), ("openvino", True)]
    # one digest of the weights for the keys of the ONNX export and of the OpenVINO conversion (torch reads it too)
    assert hashed.count("_weights_digest") == 1
    graph = ort_backend.exported(module, eager.meta)
    [stored] = (tmp_path / "onnx-models").rglob("*.onnx")
    assert graph.data == stored
    runner = runners.make_runner(module, eager.meta, "onnxruntime", FP32)
    assert runner.graph == graph and runner.precision == "fp32"
    batch = torch.randn(2, 3, 32, 32)
    assert torch.allclose(runner(batch), module(batch), atol=1e-3)
    stored.unlink()  # e.g. the cache was cleared: the graph kept in memory points nowhere
    again = runners.make_runner(module, eager.meta, "onnxruntime", FP32)
    assert stored.is_file() and torch.allclose(again(batch), runner(batch), atol=1e-5)


@pytest.mark.slow
def test_an_unwritable_cache_costs_speed_not_the_result(eager, tmp_path, monkeypatch, caplog) -> None:
    """Where the converted-model cache cannot be written, the runtimes get the exported graph as bytes."""
    from collections import OrderedDict

    from resnetkit.backends import common
    from resnetkit.backends.onnxruntime import SerializedGraph

    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("RESNETKIT_TUNING_CACHE", str(tmp_path / "not-a-folder" / "tuning.json"))
    monkeypatch.setattr(common, "_recent", OrderedDict())
    module = copy.deepcopy(eager.module).eval()
    with torch.no_grad():
        module.linear.bias += 3.0  # weights no other test exported
    batch = torch.randn(2, 3, 32, 32)
    onnx_runtime, openvino = (runners.make_runner(module, eager.meta, name, FP32) for name in ("onnxruntime", "openvino"))
    assert isinstance(onnx_runtime.graph, SerializedGraph) and isinstance(onnx_runtime.graph.data, bytes)
    for runner in (onnx_runtime, openvino):
        assert torch.allclose(runner(batch), module(batch), atol=1e-3)
    assert "could not cache the converted model" in caplog.text


def test_the_tracer_gets_a_copy_only_of_a_module_it_would_change(eager) -> None:
    from resnetkit.backends.onnxruntime import _fp32_eval

    module = copy.deepcopy(eager.module).eval()
    assert _fp32_eval(module) is module
    for changed in (copy.deepcopy(module).train(), copy.deepcopy(module).to(torch.bfloat16)):
        traced = _fp32_eval(changed)
        assert traced is not changed and not traced.training and next(traced.parameters()).dtype == torch.float32
        assert changed.training or next(changed.parameters()).dtype == torch.bfloat16  # left as it was


TELEMETRY_CHECK = """
import sys, torch
from resnetkit import load_model
from resnetkit.backends.openvino import OpenVinoRunner, import_openvino, to_openvino
import_openvino()
eager = load_model("cifar_resnet20", pretrained=False, backend="eager")
batch = torch.randn(2, 3, 32, 32)
assert torch.allclose(OpenVinoRunner(to_openvino(eager.module, eager.meta), "fp32")(batch), eager.logits(batch), atol=1e-3)
print("telemetry importable:", sys.modules.get("openvino_telemetry") is not None)
"""


@pytest.mark.slow
@pytest.mark.parametrize("consent, sent", [(None, False), ("1", True)])
def test_openvino_sends_no_usage_telemetry_from_resnetkit_unless_the_user_opted_in(tmp_path, consent, sent) -> None:
    """OpenVINO's converter and NNCF report usage unless the user opted out; in resnetkit's processes they do only
    after an explicit opt-in (its consent file says 1), and conversion works either way."""
    if consent:
        (tmp_path / "intel").mkdir()
        (tmp_path / "intel" / "openvino_telemetry").write_text(consent)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}
    done = subprocess.run([sys.executable, "-c", TELEMETRY_CHECK], capture_output=True, text=True,
                          env={**env, "HOME": str(tmp_path)}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"telemetry importable: {sent}"


OUT_OF_ORDER_RUNNERS = """
import gc, os, signal, torch
from resnetkit import load_model
from resnetkit.backends.base import make_runner
eager = load_model("cifar_resnet20", pretrained=False, backend="eager")
first = make_runner(eager.module, eager.meta, "openvino")
second = make_runner(eager.module, eager.meta, "openvino")
first(torch.zeros(1, 3, 32, 32)); second(torch.zeros(1, 3, 32, 32))
del first; gc.collect()
del second; gc.collect()
try:
    os.kill(os.getpid(), signal.SIGINT)
except KeyboardInterrupt:
    print("Ctrl-C handled")
"""


@pytest.mark.slow
def test_ctrl_c_after_openvino_runners_are_freed_out_of_order() -> None:
    """Each OpenVINO Core swaps the thread's signal stack; freeing two Cores out of order used to
    leave a freed one in place, and the next Ctrl-C killed the process with SIGSEGV."""
    done = subprocess.run([sys.executable, "-c", OUT_OF_ORDER_RUNNERS], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert done.stdout.strip() == "Ctrl-C handled"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_int8_backends_run_int8_and_stay_close(backend: str, cifar_weights, cifar_test_dir) -> None:
    trained = load_model("cifar_resnet20", backend="eager")  # the real weights, imported by cifar_weights
    calibration = image_batches(cifar_test_dir, trained.meta, limit=64, batch_size=16)
    held_out = torch.cat(image_batches(cifar_test_dir, trained.meta, limit=64, batch_size=64, seed=1))
    runner = _same_weights(backend, RunnerOptions(precision="int8", calibration=calibration), trained)
    assert runner.precision == "int8"
    logits, reference = runner(held_out), trained.logits(held_out)
    assert logits.shape == (64, 10)
    # int8 changes logits by a small fraction of their spread, and the top-1 class almost never
    assert (logits - reference).abs().mean() < 0.1 * reference.std()
    assert (logits.argmax(1) == reference.argmax(1)).float().mean() >= 0.9


@pytest.mark.slow
def test_auto_says_what_it_picked(eager) -> None:
    runner = _same_weights("auto", FP32, eager)
    choice = runner.tuning.choice
    assert runner.auto and runner.backend == choice.backend and runner.precision == choice.precision == "fp32"
    assert runner.timings_ms[choice.label] == min(runner.timings_ms.values())
    batch = torch.randn(2, 3, 32, 32)
    assert torch.allclose(runner(batch), eager.logits(batch), atol=1e-3)


def test_backend_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BackendUnavailableError, match="Unknown backend 'tensorrt'"):
        load_model("cifar_resnet20", pretrained=False, backend="tensorrt")
    with pytest.raises(BackendUnavailableError, match="runs fp32, int8, not 'bf16'"):
        load_model("cifar_resnet20", pretrained=False, backend="onnxruntime", options=RunnerOptions(precision="bf16"))
    backend = runners.get_backend("openvino")
    monkeypatch.setitem(runners._BACKENDS, "openvino", dataclasses.replace(backend, imports=("no_such_module_xyz",)))
    with pytest.raises(BackendUnavailableError, match=r"not available on this machine. Install it with: pip install 'resnetkit\[backends\]'"):
        load_model("cifar_resnet20", pretrained=False, backend="openvino")


def test_backends_command_lists_versions() -> None:
    result = CliRunner().invoke(app, ["backends", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["backend"]: r for r in json.loads(result.stdout)}
    assert {"eager", "compile", "onnxruntime", "openvino", "torchscript", "auto"} <= set(rows)
    assert rows["openvino"]["available"] and rows["openvino"]["version"]
    assert rows["onnxruntime"]["precisions"] == ["fp32", "int8"] and rows["onnxruntime"]["reads"] == [".onnx"]
    assert rows["torchscript"]["reads"] == [".torchscript"] and rows["eager"]["reads"] == []
    from resnetkit.backends.openvino import default_precision

    assert rows["openvino"]["default_precision"] == default_precision()
    assert rows["eager"]["devices"] == ["cpu", "cuda"] and rows["onnxruntime"]["devices"] == ["cpu"]


def test_backends_say_what_they_write() -> None:
    result = CliRunner().invoke(app, ["backends", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["backend"]: r for r in json.loads(result.stdout)}
    assert rows["onnxruntime"]["exports"] == [{"format": "onnx", "suffix": ".onnx"}]
    assert rows["openvino"]["exports"] == [{"format": "openvino", "suffix": ".xml"}]
    assert rows["torchscript"]["exports"] == [{"format": "torchscript", "suffix": ".torchscript"}]
    defaults = {q["method"]: name for name, row in rows.items() for q in row["quantizes"] if q["default"]}
    assert defaults == {"fp16": "openvino", "bf16": "openvino", "static-int8": "openvino", "dynamic-int8": "onnxruntime"}
    assert [(q["method"], q["suffix"]) for q in rows["eager"]["quantizes"]] == [("fp16", ".pt"), ("bf16", ".pt")]
    assert rows["eager"]["exports"] == [] and rows["auto"]["quantizes"] == []
    table = CliRunner().invoke(app, ["backends", "--device", "cpu"])
    assert "default on CPU" in table.stdout and "export onnx; quantize dynamic-int8" in table.stdout
    assert "quantize fp16, bf16" in table.stdout and "cpu, cuda" in table.stdout


def test_the_registry_refuses_a_second_writer_of_an_export_format(monkeypatch: pytest.MonkeyPatch) -> None:
    onnx = runners.get_backend("onnxruntime").formats[0]
    runners.registered()
    monkeypatch.setattr(runners, "_BACKENDS", dict(runners._BACKENDS))
    with pytest.raises(ValueError, match="export format 'onnx' is already written by backend 'onnxruntime'"):
        runners.register(runners.Backend("onnx_again", "another ONNX writer", ("fp32",), formats=(onnx,)))


def test_exported_graphs_tap_features_through_their_backend(eager) -> None:
    from resnetkit.features.exported import exported_features_runner
    from resnetkit.run.loading import Classifier

    batch, seen = torch.randn(2, 3, 32, 32), []
    hook = eager.module.linear.register_forward_hook(lambda layer, inputs, output: seen.append(inputs[0]))
    try:
        eager.logits(batch)
    finally:
        hook.remove()
    for backend in ("onnxruntime", "openvino"):
        features = exported_features_runner(Classifier(eager.meta, _same_weights(backend, FP32, eager)))
        assert features is not None and features.backend == backend
        assert torch.allclose(features(batch), seen[0], atol=1e-3)  # the head's input: the pooled features
    assert exported_features_runner(Classifier(eager.meta, _same_weights("eager", FP32, eager))) is None


@pytest.mark.parametrize("fmt,suffix,kind", [("onnx", ".onnx", "an ONNX graph"), ("openvino", ".xml", "an OpenVINO model"),
                                             ("torchscript", ".torchscript", "a TorchScript file")])
def test_a_damaged_model_file_is_one_error_line_naming_it(eager, tmp_path, fmt: str, suffix: str, kind: str) -> None:
    from conftest import make_image, run_cli

    whole = tmp_path / f"whole{suffix}"
    runners.export_formats()[fmt][1].export.write(copy.deepcopy(eager.module), eager.meta, whole, runners.ExportSettings())
    image = make_image(tmp_path / "x.png")
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole.read_bytes()[:len(whole.read_bytes()) // 3])
    for companion in (".bin",) if fmt == "openvino" else ():
        cut.with_suffix(companion).write_bytes(whole.with_suffix(companion).read_bytes())
    result = run_cli("classify", cut, image)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"error: {cut}" in result.stderr and f"cannot be read as {kind}: it is corrupt, truncated" in result.stderr
    assert "Export the model again" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    if fmt == "openvino":  # the weights file left behind
        lone = tmp_path / "lone.xml"
        lone.write_bytes(whole.read_bytes())
        result = run_cli("classify", lone, image)
        assert result.returncode == 2 and f"{lone} is incomplete: lone.bin, written beside it, is missing" in result.stderr
