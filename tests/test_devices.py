"""Where a model runs: device words, backends that declare their devices, the PyTorch runners' shared part, the GPU
input pipeline; and, on a GPU (tests marked gpu), the CUDA runners themselves."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from resnetkit import load_model
from resnetkit.backends import auto
from resnetkit.backends.base import RunInfo, RunnerOptions, get_backend, make_runner
from resnetkit.backends.common import TorchRunner
from resnetkit.core.device import CPU, Device, DeviceError, cuda_count, resolve_device, usable_cores
from resnetkit.core.errors import BackendUnavailableError, ResnetkitError
from resnetkit.core.images import iter_prepared_batches, prepare_image
from resnetkit.core.zoo import get_spec
from resnetkit.run.classify import classify, default_workers, prepared_batches

from conftest import make_image

GPU = Device("cuda", 0)  # a record only: nothing here touches CUDA unless the test is marked gpu


def test_device_words():
    assert resolve_device("cpu") == CPU and str(CPU) == "cpu" and CPU.name == "CPU" and CPU.synchronize is None
    chosen = resolve_device("auto")
    assert chosen.auto and chosen.kind == ("cuda" if cuda_count() else "cpu")
    assert resolve_device(None) == chosen
    with pytest.raises(DeviceError, match="'gpu' is not a device: use auto, cpu, cuda or cuda:N"):
        resolve_device("gpu")
    with pytest.raises(DeviceError, match="not a device"):
        resolve_device("cuda:x")
    assert 1 <= usable_cores() <= (__import__("os").cpu_count() or 1)


@pytest.mark.skipif(cuda_count() > 0, reason="this machine has a GPU")
def test_asking_for_a_gpu_without_one_says_what_to_do():
    with pytest.raises(DeviceError, match=r"--device cuda: torch sees no CUDA GPU here \(.*\)\. Use --device cpu"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="--device cuda:1: torch sees no CUDA GPU"):
        resolve_device("cuda:1")


def test_load_model_takes_a_device_word():
    model = load_model("cifar_resnet20", pretrained=False, backend="eager", device="cpu")
    assert model.ran.device == CPU and model.logits(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(DeviceError, match="not a device"):
        load_model("cifar_resnet20", pretrained=False, device="tpu")


def test_labels_say_what_ran_and_where():
    assert RunInfo("openvino", "bf16", CPU, chosen_by_auto=True).label() == "openvino/bf16 on CPU (auto)"
    assert RunInfo("eager", "fp32").label() == "eager/fp32 on CPU"
    assert RunInfo("eager", "fp32", threads=2).to_dict() == {
        "backend": "eager", "precision": "fp32", "device": "cpu", "device_name": "CPU", "chosen_by_auto": False, "threads": 2,
        "label": "eager/fp32 on CPU"}


def test_backends_declare_their_devices():
    assert get_backend("openvino").devices == ("cpu",) and "cuda" in get_backend("eager").devices
    assert get_backend("cuda-graph").devices == ("cuda",)
    # --device auto chose a GPU that the backend cannot use: the CPU instead; asked for explicitly: a clear error
    assert get_backend("openvino").fit_device(Device("cuda", 0, auto=True)) == Device(auto=True)
    with pytest.raises(BackendUnavailableError, match="The openvino backend runs on cpu, not cuda:0. Use --device cpu"):
        get_backend("openvino").fit_device(GPU)
    with pytest.raises(BackendUnavailableError, match="The cuda-graph backend runs on cuda, not cpu"):
        load_model("cifar_resnet20", pretrained=False, backend="cuda-graph", options=RunnerOptions(device=CPU)).logits(
            torch.zeros(1, 3, 32, 32))


def test_auto_tries_the_backends_of_the_device():
    on_gpu = [b.name for b in auto.candidates(None, GPU)]
    assert set(on_gpu) == {"eager", "cuda-graph"}  # compile is not tried (tens of seconds to start)
    assert "openvino" in [b.name for b in auto.candidates(None, CPU)] and "cuda-graph" not in [
        b.name for b in auto.candidates(None, CPU)]
    assert auto.default_precision(GPU) == "fp16"
    assert auto.thread_counts(GPU) == [None] and auto.thread_counts(CPU, 1) == [1]


def test_auto_keeps_cuda_graphs_only_where_they_are_clearly_faster():
    from resnetkit.backends.tuning import Candidate

    eager, graph = Candidate("eager", "fp16", None), Candidate("cuda-graph", "fp16", None)
    assert auto.choose({eager: 3.45, graph: 0.90}) == graph  # batch 1: launches dominate
    assert auto.choose({eager: 15.5, graph: 15.2}) == eager  # batch 256: within 3 %, not worth the graph's buffers
    assert auto.choose({eager: 15.5, graph: 14.9}) == graph
    assert auto.choose({graph: 1.0}) == graph


class _Fits(TorchRunner):
    """A runner whose 'device' holds at most ``limit`` images (raises CUDA's out-of-memory error above it)."""

    backend = "fits"

    def __init__(self, limit: int) -> None:
        super().__init__(torch.nn.Flatten(), "fp32")
        self.limit, self.sizes = limit, []

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(inputs))
        if len(inputs) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return inputs.flatten(1)


def test_a_batch_that_does_not_fit_runs_in_halves_and_says_so(caplog, monkeypatch):
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    runner = _Fits(limit=3)
    batch = torch.arange(10 * 2, dtype=torch.float32).view(10, 2)
    with caplog.at_level("WARNING", logger="resnetkit"):
        out = runner(batch)
    assert torch.equal(out, batch)  # every row, in order
    assert runner.fits == 2 and runner.sizes[:3] == [10, 5, 2]
    assert "out of GPU memory at batch 10 on cpu: running batches of at most 5" in caplog.text
    runner.sizes.clear()
    runner(batch)
    assert max(runner.sizes) == 2  # later calls go straight to the size that fits
    with pytest.raises(ResnetkitError, match="does not fit in the memory of CPU .* even at batch 1"):
        _Fits(limit=0)(batch[:4])


def test_decode_processes_give_the_same_batches_as_threads(tmp_path: Path):
    images = [make_image(tmp_path / f"{i}.jpg", (40 + i, 30), seed=i) for i in range(5)]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    sources = [str(images[0]), str(broken), *map(str, images[1:]), str(tmp_path / "gone.png")]
    prepare = functools.partial(prepare_image, preprocessing=get_spec("cifar_resnet20").meta().preprocessing)
    threads = list(iter_prepared_batches(sources, prepare, batch_size=3, workers=2))
    processes = list(iter_prepared_batches(sources, prepare, batch_size=3, workers=2, processes=True))
    assert [b.sources for b in processes] == [b.sources for b in threads] == [sources[:3], sources[3:6], sources[6:]]
    for ours, theirs in zip(processes, threads):
        assert torch.equal(ours.images, theirs.images)
        assert [type(e).__name__ if e else None for e in ours.errors] == [type(e).__name__ if e else None
                                                                        for e in theirs.errors]
    assert processes[0].readable == [0, 2] and processes[2].readable == [] and processes[2].errors[0] is not None


def test_decoding_workers_follow_the_device():
    assert default_workers(CPU) == 2 and default_workers(GPU) == usable_cores()


# --- on a GPU ----------------------------------------------------------------------------------------------------

@pytest.fixture
def cifar_model(cifar_weights):
    return load_model("cifar_resnet20", backend="eager", options=RunnerOptions(precision="fp32", device=CPU))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["eager", "cuda-graph", "compile"])
def test_cuda_runners_agree_with_cpu_fp32(backend, cifar_model, cifar_test_dir):
    from resnetkit.core.images import iter_image_paths

    paths = [str(p) for p in list(iter_image_paths([cifar_test_dir]))[::50]]  # 200 images, every class
    batch = torch.stack([cifar_model.prepare(p) for p in paths])
    reference = cifar_model.logits(batch).argmax(1)
    module = get_spec("cifar_resnet20").build()
    module.load_state_dict(cifar_model.module.float().state_dict())
    runner = make_runner(module, cifar_model.meta, backend, RunnerOptions(device=resolve_device("cuda"), batch_size=64))
    info = RunInfo(runner.backend, runner.precision, runner.device)
    assert info.label() == f"{backend}/fp16 on {torch.cuda.get_device_name(0)}" and runner.channels_last
    logits = runner(batch)
    assert logits.device.type == "cpu" and logits.dtype == torch.float32  # back on the input's device
    assert (logits.argmax(1) == reference).float().mean() >= 0.99
    on_gpu = runner(batch.cuda())
    assert on_gpu.device.type == "cuda" and torch.allclose(on_gpu.cpu(), logits, atol=1e-2)
    assert (runner(batch[:7]).argmax(1) == logits[:7].argmax(1)).sum() >= 6  # another batch size, the same answers


@pytest.mark.gpu
def test_cuda_graph_keeps_one_graph_per_batch_size(cifar_model):
    runner = make_runner(get_spec("cifar_resnet20").build(), cifar_model.meta, "cuda-graph",
                         RunnerOptions(device=resolve_device("cuda")))
    for size in (1, 4, 1, 4, 2):
        runner(torch.randn(size, 3, 32, 32))
    assert sorted(runner._graphs) == [1, 2, 4]


@pytest.mark.gpu
def test_auto_on_a_gpu_picks_a_gpu_backend_and_caches_per_gpu(tmp_path, monkeypatch):
    from resnetkit.backends import tuning

    monkeypatch.setenv(tuning.ENV_VAR, str(tmp_path / "tuning.json"))
    device = resolve_device("auto")
    model = load_model("cifar_resnet20", pretrained=False, options=RunnerOptions(device=device))
    model.logits(torch.zeros(1, 3, 32, 32))
    ran = model.ran
    assert ran.chosen_by_auto and ran.device.is_cuda and ran.backend in ("eager", "cuda-graph") and ran.precision == "fp16"
    [entry] = tuning.entries()
    assert entry.machine["gpu"]["gpu"] == torch.cuda.get_device_name(0) and entry.machine["gpu"]["cuda"]
    assert set(entry.timings_ms) == {"eager/fp16", "cuda-graph/fp16"}
    again = load_model("cifar_resnet20", pretrained=False, options=RunnerOptions(device=device))
    again.logits(torch.zeros(1, 3, 32, 32))
    assert again.runner.cached


@pytest.mark.gpu
def test_classify_on_a_gpu_decodes_in_processes_into_pinned_memory(cifar_weights, cifar_test_dir):
    gpu = load_model("cifar_resnet20", options=RunnerOptions(device=resolve_device("cuda")))
    cpu = load_model("cifar_resnet20", backend="eager", options=RunnerOptions(precision="fp32", device=CPU))
    folders = sorted(cifar_test_dir.iterdir())[:2]
    first = next(prepared_batches(gpu, [str(p) for p in sorted(folders[0].glob("*.jpg"))[:64]], batch_size=32))
    assert first.images.is_pinned() and len(first.images) == 32
    ours, reference = classify(gpu, folders, batch_size=64), classify(cpu, folders, batch_size=64)
    same = sum(a.predictions[0].label == b.predictions[0].label for a, b in zip(ours, reference))
    assert len(ours) == 2000 and same / len(ours) >= 0.99
