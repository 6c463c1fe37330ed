"""bench on a chosen device and thread count: the options reach every runner, records say what ran where, and on
a GPU the batch time, GPU memory and best batch are measured (their CPU-side logic here; ``gpu`` tests on a GPU)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from resnetkit import BenchConfig, bench
from resnetkit.backends import base
from resnetkit.choose.gpu import best_batch
from resnetkit.choose.records import BenchRecord
from resnetkit.choose.seeds import SEEDS_MODELS, PublishedFileError, PublishedRow, read_published
from resnetkit.core.device import cuda_count

FAST = BenchConfig.quick(min_runs=3, min_rounds=2, max_seconds=0.5, throughput_runs=1, batch_size=4, device="cpu")
LOCAL = dataclasses.replace(FAST, isolate=False)  # in this process, so the factories below see every build
ON_GPU = dataclasses.replace(FAST, device="cuda")


def _cli(*args):
    from conftest import run_cli

    return run_cli(*args, env={"COLUMNS": "300"})


@pytest.fixture
def built_with(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int | None, str]]:
    """(backend, threads, device) of every runner the registry's factories build during the test."""
    base.load_backend_modules()
    seen: list[tuple[str, int | None, str]] = []
    for name, backend in list(base._BACKENDS.items()):
        if backend.factory is None:
            continue

        def spy(module, meta, options, factory=backend.factory, name=name):
            seen.append((name, options.threads, str(options.device)))
            return factory(module, meta, options)

        monkeypatch.setitem(base._BACKENDS, name, dataclasses.replace(backend, factory=spy))
    return seen


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_reach_every_runner_the_eager_reference_included(built_with, threads):
    (record,) = bench(["cifar_resnet20"], dataclasses.replace(LOCAL, threads=threads), backends=["eager"],
                      precisions=["bf16"])
    assert built_with == [("eager", threads, "cpu"), ("eager", threads, "cpu")]  # the variant, then the reference
    assert record.threads == threads and (record.backend, record.precision) == ("eager", "bf16")


@pytest.mark.slow
@pytest.mark.parametrize("threads", [1, 2])
def test_auto_builds_and_times_its_candidates_on_the_threads_asked_for(built_with, threads):
    (record,) = bench(["cifar_resnet20"], dataclasses.replace(LOCAL, threads=threads))
    assert record.chosen_by_auto and record.threads == threads
    assert {"auto", "eager"} <= {name for name, _, _ in built_with}  # auto, its candidates and the reference
    assert {(count, device) for _, count, device in built_with} == {(threads, "cpu")}


def test_best_batch_doubles_while_images_per_second_rise_by_more_than_5_percent():
    rates = {16: 100.0, 32: 180.0, 64: 300.0, 128: 310.0, 256: 400.0}
    tried: list[int] = []
    assert best_batch(lambda size: tried.append(size) or rates[size], 16) == (128, 310.0)
    assert tried == [16, 32, 64, 128]  # 310 is within 5 % of 300: no further doubling
    assert best_batch(lambda size: 10.0 * size, 16, limit=256) == (256, 2560.0)
    assert best_batch(lambda size: {8: 50.0, 16: 40.0}[size], 8) == (8, 50.0)  # a slower doubling: the first stays


def test_best_batch_keeps_the_last_size_that_fit_when_the_gpu_is_full():
    freed: list[bool] = []

    def images_per_second(size: int) -> float:
        if size >= 128:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return 100.0 * size

    assert best_batch(images_per_second, 16, free_memory=lambda: freed.append(True)) == (64, 6400.0)
    assert freed == [True]


def _record(model: str, **fields) -> BenchRecord:
    facts = dict(model=model, backend="eager", precision="fp32", params_m=11.69, gmacs=1.81, size_mb_fp32=46.8,
                 size_mb_fp16=23.4, latency_ms_p50=1.5, latency_ms_p90=1.6, latency_runs=40, throughput_ips=3000.0,
                 batch_size=16, throughput_runs=3, peak_mem_mb=900.0, top1=69.76, top5=89.08, accuracy_source="test",
                 accuracy_dataset="ImageNet-1K val", published_gmacs=None, input_size=224, threads=16, device="cpu",
                 memory_format="contiguous (NCHW)", torch_version="2.11.0", cpu="AMD EPYC", latency_ms_p50_ci=[1.4, 1.6])
    return BenchRecord(**{**facts, **fields})


def _gpu_record(model: str, **fields) -> BenchRecord:
    gpu = dict(device="cuda:0", device_name="NVIDIA H200", chosen_by_auto=True, backend="cuda-graph",
               ran="cuda-graph/fp32 on NVIDIA H200 (auto)", batch_ms_p50=5.3, gpu_peak_mb=170.0, best_batch_size=256,
               best_throughput_ips=21000.0)
    return _record(model, **{**gpu, **fields})


@pytest.fixture
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    from resnetkit.cli.app import console

    monkeypatch.setattr(console, "width", 400)


def test_the_table_of_gpu_records_shows_batch_time_gpu_memory_and_best_batch(capsys, wide_console):
    from resnetkit.cli.bench_cmd import _print_table

    records = [_gpu_record("resnet18"), _gpu_record("resnet50", backend="eager", chosen_by_auto=False, ran="")]
    _print_table(records, BenchConfig(), 10.0)
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "params M" in line)
    for column in ("ms/batch @16", "GPU MB", "img/s @16", "best batch", "img/s @best"):
        assert column in header
    assert "peak MB" not in header and "threads" not in header
    assert "measured on NVIDIA H200 (cuda:0), torch 2.11.0" in out
    row = next(line for line in out.splitlines() if "resnet18 [cuda-graph/fp32 on NVIDIA H200 (auto)]" in line)
    assert all(cell in row for cell in ("5.3", "170", "3000.0", "256", "21000.0"))
    assert "resnet50 " in out and "resnet50 [" not in out  # plain eager fp32 chosen by hand: the model alone
    assert "timing inputs made on the GPU, so the figures are the model's own" in out
    assert "peak RSS" not in out  # not a column on the GPU (the records keep it)


def test_the_table_of_cpu_records_says_their_threads(capsys, wide_console):
    from resnetkit.cli.bench_cmd import _print_table

    _print_table([_record("resnet18", threads=2), _record("resnet34", threads=2)], BenchConfig(), 10.0)
    out = capsys.readouterr().out
    assert "measured on AMD EPYC, 2 threads" in out and "GPU MB" not in out and "peak MB" in out
    _print_table([_record("resnet18", threads=1), _record("resnet34", threads=2)], BenchConfig(), 10.0)
    header = next(line for line in capsys.readouterr().out.splitlines() if "params M" in line)
    assert "threads" in header  # they differ: a column says each one's


def test_gpu_fields_survive_the_json_file():
    record = _gpu_record("resnet18")
    again = BenchRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert again == record and again.label == "resnet18 [cuda-graph/fp32 on NVIDIA H200 (auto)]"
    assert (again.gpu_peak_mb, again.best_batch_size, again.best_throughput_ips) == (170.0, 256, 21000.0)


def _published_file(tmp_path, data) -> str:
    path = tmp_path / "published.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_seeds_table_prints_the_published_figures_next_to_ours_with_their_source(tmp_path, capsys, wide_console):
    from resnetkit.cli.bench_cmd import _print_seeds_table

    # made-up figures for this test only: resnetkit ships none (the seeds' own are not available to it)
    path = _published_file(tmp_path, {"source": "a blog post", "device": "NVIDIA T4",
                                      "rows": {"resnet18": {"ms_per_batch": 11.25, "gpu_mb": 777, "img_s": 1422}}})
    published = read_published(path)
    assert published.rows == {"resnet18": PublishedRow(11.25, 777, 1422)}
    records = [_gpu_record(model) for model in SEEDS_MODELS[:2]]
    config = BenchConfig(batch_size=16)
    _print_seeds_table(records, config, published, 5.0)
    out = capsys.readouterr().out
    assert "the seeds' table: batch 16, 224x224, fp32; ours: NVIDIA H200 (cuda:0)" in out
    assert "published: NVIDIA T4 (a blog post)" in out and "theirs: ms/batch" in out
    row18 = next(line for line in out.splitlines() if line.startswith("│ resnet18 "))
    assert all(cell in row18 for cell in ("5.30", "170", "3000", "11.25", "777", "1422"))
    row34 = next(line for line in out.splitlines() if line.startswith("│ resnet34 "))
    assert row34.count(" - ") == 3  # no published row for resnet34
    _print_seeds_table(records, config, None, 5.0)
    out = capsys.readouterr().out
    assert "theirs: ms/batch" not in out
    assert "theirs: the published figures (the seeds' table, an NVIDIA T4) were not given: pass them with --published" in out


@pytest.mark.parametrize("data, message", [
    ({"device": "NVIDIA T4", "rows": {"resnet18": {}}}, "needs a 'source' and a 'device'"),
    ({"source": "x", "device": "T4", "rows": {}}, "needs 'rows'"),
    ({"source": "x", "device": "T4", "rows": {"vgg16": {"img_s": 1}}}, "'vgg16' is not in the seeds' table"),
    ({"source": "x", "device": "T4", "rows": {"resnet18": {"fps": 1}}}, "the row of resnet18 has fps"),
    ({"source": "x", "device": "T4", "rows": {"resnet18": {"img_s": "fast"}}}, "img_s is 'fast', not a positive number"),
])
def test_a_bad_published_file_says_what_is_wrong(tmp_path, data, message):
    with pytest.raises(PublishedFileError, match=message):
        read_published(_published_file(tmp_path, data))


@pytest.mark.parametrize("args, message", [
    (["--published", "x.json"], "error: --published x.json: no such file."),
    (["--table", "seeds", "--models", "resnet18"], "error: --table seeds measures its own models"),
    (["--table", "seeds", "--precisions", "fp16"], "leave out --models, --batch-size and --precisions"),
    (["--table", "resnets"], "Invalid value for '--table'"),
])
def test_cli_seeds_table_bad_input(args, message):
    result = _cli("bench", *args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_cli_published_figures_go_with_the_seeds_table(tmp_path):
    path = _published_file(tmp_path, {"source": "x", "device": "T4", "rows": {"resnet18": {"img_s": 1}}})
    result = _cli("bench", "--published", path)
    assert result.returncode == 2 and result.stderr.strip() == ("error: --published prints published figures next "
                                                                "to the seeds' table: add --table seeds.")


@pytest.mark.skipif(cuda_count() > 0, reason="this machine has a CUDA GPU")
def test_cli_bench_on_a_gpu_this_machine_lacks_is_one_error_line():
    result = _cli("bench", "--models", "cifar_resnet20", "--device", "cuda")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: --device cuda: torch sees no CUDA GPU here")
    assert result.stderr.count("\n") == 1


@pytest.mark.gpu
def test_bench_on_a_gpu_times_the_chosen_runner_there_with_its_memory_and_best_batch():
    from resnetkit.backends.auto import candidates
    from resnetkit.core.device import resolve_device

    (record,) = bench(["cifar_resnet20"], ON_GPU)  # measuring processes forked from the server: CUDA works there
    assert record.device == "cuda:0" and record.device_name == torch.cuda.get_device_name(0)
    assert record.chosen_by_auto and record.backend in {b.name for b in candidates(None, resolve_device("cuda"))}
    assert record.ran == f"{record.backend}/{record.precision} on {record.device_name} (auto)"
    assert record.gpu_peak_mb > 0 and record.batch_ms_p50 > 0 and record.throughput_ips > 0
    assert record.best_batch_size >= record.batch_size and record.best_throughput_ips > 0
    assert record.reference_latency_ms_p50 > 0  # eager fp32 on the same GPU


@pytest.mark.gpu
def test_plain_eager_fp32_on_a_gpu_holds_its_weights_in_gpu_memory():
    (record,) = bench(["resnet18"], ON_GPU, backends=["eager"], precisions=["fp32"])
    assert record.device == "cuda:0" and not record.chosen_by_auto and record.vs_reference == "is the reference"
    assert record.gpu_peak_mb >= record.size_mb_fp32  # 46.8 MB of fp32 weights, on the GPU
    assert record.best_batch_size >= record.batch_size and record.best_throughput_ips > 0


@pytest.mark.gpu
@pytest.mark.slow
def test_cli_seeds_table_on_a_gpu(tmp_path):
    out = tmp_path / "seeds.json"
    result = _cli("bench", "--device", "cuda", "--table", "seeds", "--quick", "-o", str(out))
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())
    assert [r["model"] for r in rows] == list(SEEDS_MODELS)
    assert all(r["batch_size"] == 16 and r["precision"] == "fp32" and r["device"] == "cuda:0" for r in rows)
    assert all(r["gpu_peak_mb"] > r["size_mb_fp32"] and r["throughput_ips"] > 0 for r in rows)
    assert "the seeds' table: batch 16, 224x224, fp32; ours: " in result.stdout
    assert "were not given" in result.stdout
