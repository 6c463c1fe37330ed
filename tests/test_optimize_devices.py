"""export, quantize and prune with --device: files are written from the CPU, latencies are measured on the device
where the result runs there, and on a GPU the clock waits for the device."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from resnetkit import load_model
from resnetkit.backends.base import RunnerOptions
from resnetkit.core.device import CPU, Device, resolve_device
from resnetkit.core.errors import BackendUnavailableError
from resnetkit.run.loading import Classifier
from resnetkit.shrink import compare
from resnetkit.shrink.export import check_export_request, export_model
from resnetkit.shrink.prune import prune
from resnetkit.shrink.quantize import quantize, resolve_request

from conftest import eager_source, run_cli

GPU, AUTO_GPU = Device("cuda", 0), Device("cuda", 0, auto=True)  # records only: nothing here runs on them


def test_export_measures_where_the_file_runs(tmp_path: Path) -> None:
    assert check_export_request("onnx", tmp_path / "m.onnx", AUTO_GPU)[2] == Device(auto=True)  # ONNX Runtime: CPU
    assert check_export_request("hf", tmp_path / "folder", GPU)[2] == GPU  # a PyTorch model runs on the GPU
    assert check_export_request("onnx", tmp_path / "m.onnx")[2] == CPU
    with pytest.raises(BackendUnavailableError, match="The torchscript backend runs on cpu, not cuda:0. Use --device cpu"):
        check_export_request("torchscript", tmp_path / "m.torchscript", GPU)


def test_quantize_measures_where_the_backend_runs(tmp_path: Path) -> None:
    request = resolve_request("fp16", None, tmp_path / "q.pt", None, 8, None, device=GPU)
    assert (request.backend, request.device) == ("eager", GPU)  # a .pt output: eager, which runs on the GPU
    request = resolve_request("static-int8", None, tmp_path / "q.onnx", "calib", 8, None, device=AUTO_GPU)
    assert (request.backend, request.device) == ("onnxruntime", Device(auto=True))
    assert resolve_request("bf16", None, tmp_path / "q.pt", None, 8, None).device == CPU
    with pytest.raises(BackendUnavailableError, match="The onnxruntime backend runs on cpu, not cuda:0"):
        resolve_request("dynamic-int8", None, tmp_path / "q.onnx", None, 8, None, device=GPU)


def test_latency_comparisons_wait_for_the_device() -> None:
    """On a GPU the clock stops once the device has finished: compare_latency passes each device's synchronize."""
    source = eager_source("cifar_resnet20", pretrained=False)
    waits: list[str] = []
    devices = [SimpleNamespace(torch=torch.device("cpu"), synchronize=lambda name=name: waits.append(name),
                               name=name) for name in ("gpu0", "gpu1")]

    class OnDevice:
        backend, precision = "eager", "fp32"

        def __init__(self, device: SimpleNamespace) -> None:
            self.device = device

        def __call__(self, batch: torch.Tensor) -> torch.Tensor:
            calls.append(self.device.name)
            return source.logits(batch)

    calls: list[str] = []
    timings = compare.compare_latency({d.name: Classifier(source.meta, OnDevice(d)) for d in devices})
    # both devices waited for, before and after every call of either (counted or not)
    assert set(timings.timings) == {"gpu0", "gpu1"} and waits.count("gpu0") == waits.count("gpu1") == 2 * len(calls)
    assert all(calls.count(name) >= timing.runs + timing.warmup for name, timing in timings.timings.items())
    assert compare.synchronize_all([CPU, CPU]) is None  # the CPU: nothing to wait for


def test_the_commands_refuse_a_device_that_is_none(tmp_path: Path) -> None:
    for command in (["export", "--format", "onnx", "-o", tmp_path / "m.onnx"],
                    ["quantize", "--method", "fp16", "-o", tmp_path / "q.pt"],
                    ["prune", "--method", "channel", "-o", tmp_path / "c.pt"]):
        refused = run_cli(command[0], "cifar_resnet20", "--random-weights", *command[1:], "--device", "tpu")
        assert refused.returncode == 2 and "--device 'tpu' is not a device" in refused.stderr
        assert not list(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.slow
def test_prune_on_the_cpu_from_the_command_line(tmp_path: Path) -> None:
    pruned = run_cli("prune", "cifar_resnet20", "--random-weights", "--method", "l1-unstructured", "--device", "cpu",
                     "-o", tmp_path / "p.pt", "--json")
    assert pruned.returncode == 0, pruned.stderr
    assert (json.loads(pruned.stdout)["device"], json.loads(pruned.stdout)["device_name"]) == ("cpu", "CPU")
    assert load_model(tmp_path / "p.pt", backend="eager").meta.provenance.recipe[0].method == "l1-unstructured"


@pytest.mark.gpu
def test_latencies_on_the_gpu_and_files_from_the_cpu(tmp_path: Path) -> None:
    gpu = resolve_device("auto")
    source = eager_source("cifar_resnet20", pretrained=False)
    onnx = export_model(source, "onnx", tmp_path / "m.onnx", dynamic_batch=True, check_images=8, device=gpu)
    assert (onnx.device, onnx.backend) == ("cpu", "onnxruntime")  # ONNX Runtime runs on the CPU only
    folder = export_model(eager_source("resnet18", pretrained=False), "hf", tmp_path / "hf", check_images=8, device=gpu)
    assert (folder.device, folder.device_name) == (str(gpu), gpu.name) and folder.agreement.top1_agreement == 100.0
    half = quantize(source, "fp16", tmp_path / "q.pt", backend="eager", check_images=16, device=gpu)
    assert (half.device, half.precision) == (str(gpu), "fp16") and half.latency_ms > 0
    assert half.agreement.top1_agreement >= 90.0
    assert load_model(tmp_path / "q.pt", backend="eager").ran.precision == "fp16"  # as stored
    thin = prune(source, "channel", tmp_path / "p.pt", amount=0.5, check_images=16, device=gpu)
    assert thin.device == str(gpu) and thin.macs_after < thin.macs_before and thin.latency_ms_after > 0
    reloaded = load_model(tmp_path / "p.pt", backend="eager", options=RunnerOptions(precision="fp32", device=CPU))
    assert sum(p.numel() for p in reloaded.module.parameters()) == thin.params_after
