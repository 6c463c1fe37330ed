"""recommend: constraints with reasons; without constraints one model per dataset at the knee
of the measured accuracy/latency Pareto front (synthetic records: the rule, not a bench run)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from resnetkit.choose.bench import BenchRecord
from resnetkit.choose.recommend import Constraints, knee, pareto_front, recommend
from resnetkit.cli import app

IMAGENET, CIFAR = "ImageNet-1K val", "CIFAR-10 test (original images)"


def _record(model, latency, top1, size=10.0, dataset="ImageNet-1K val"):
    return BenchRecord(model=model, backend="eager", precision="fp32", params_m=1.0, gmacs=1.0, size_mb_fp32=size,
                       size_mb_fp16=size / 2, latency_ms_p50=latency, latency_ms_p90=latency, latency_runs=10,
                       throughput_ips=1.0, batch_size=1, throughput_runs=1, peak_mem_mb=1.0, top1=top1, top5=None,
                       accuracy_source="published: test", accuracy_dataset=dataset, published_gmacs=None, input_size=224,
                       threads=1, device="cpu", memory_format="", torch_version="", cpu="")


def test_recommend_ranks_by_accuracy_within_constraints_and_explains_exclusions():
    records = [_record("fast", 5, 70.0, size=5), _record("mid", 20, 76.0, size=50), _record("slow", 80, 78.0, size=200),
               _record("worse", 30, 72.0, size=40)]
    result = recommend(records, Constraints(max_latency_ms=40, max_size_mb=100))
    assert [c.record.model for c in result.recommended] == ["mid", "worse", "fast"]
    assert "on the accuracy/latency Pareto front" in result.recommended[0].reasons
    assert any("dominated by mid" in r for r in result.recommended[1].reasons)
    (excluded,) = result.excluded
    assert excluded.record.model == "slow"
    assert excluded.reasons == ["p50 latency 80.00 ms > 40", "size (fp32 weights) 200.00 MB > 100"]
    nothing = recommend(records, Constraints(min_top1=99))
    assert nothing.recommended == [] and len(nothing.excluded) == 4


def test_pareto_front_never_compares_datasets():
    records = [_record("imagenet", 20, 70.0), _record("cifar", 2, 91.0, dataset="CIFAR-10")]
    assert {r.model for r in pareto_front(records)} == {"imagenet", "cifar"}


def _imagenet_like():
    """The shape of the README's table: a steep start, a knee, then a long flat tail."""
    return [_record("shufflenet", 20.8, 69.36), _record("mobilenet", 27.9, 71.88), _record("effnet", 40.4, 77.69),
            _record("resnet18", 32.0, 69.76), _record("resnet50", 87.4, 76.13), _record("resnet152", 225.4, 78.31)]


def test_no_constraints_names_one_model_per_dataset_at_the_knee():
    records = _imagenet_like() + [_record("cifar20", 1.2, 91.73, dataset=CIFAR), _record("cifar32", 1.9, 92.63, dataset=CIFAR),
                                  _record("cifar_bf16", 1.0, None, dataset=CIFAR)]
    result = recommend(records)
    assert [(p.dataset, p.record.model) for p in result.picks] == [(IMAGENET, "effnet"), (CIFAR, "cifar20")]
    imagenet, cifar = result.picks
    assert [r.model for r in imagenet.front] == ["shufflenet", "mobilenet", "effnet", "resnet152"]
    assert imagenet.reason == ("at the knee of the accuracy/latency Pareto front: +5.81 top-1 points for 1.45x the "
                               "latency over mobilenet; the next model on the front, resnet152, gives only +0.62 top-1 "
                               "points for 5.58x the latency")
    assert [r.model for r in cifar.front] == ["cifar20", "cifar32"] and cifar.reason.startswith("two models on the Pareto front, so no knee")
    assert [r.model for r in result.unscored] == ["cifar_bf16"]
    assert [c.record.model for c in result.recommended] == ["effnet", "cifar20"]


def test_knee_is_the_fastest_when_no_model_is_above_the_line_and_the_only_one_alone():
    convex = [_record("a", 10, 70.0), _record("b", 40, 71.0), _record("c", 80, 80.0)]
    assert knee(convex).model == "a"
    assert "no model on it lies above the line" in recommend(convex).picks[0].reason
    (pick,) = recommend([_record("solo", 5, 60.0)]).picks
    assert pick.record.model == "solo" and pick.reason.startswith("the only model on the Pareto front")


def test_accuracies_of_different_datasets_are_never_ranked_together():
    # the CIFAR model is faster and "more accurate" in number, but on another dataset: it dominates nothing.
    records = [_record("imagenet", 20, 70.0), _record("cifar", 2, 91.0, dataset=CIFAR)]
    picks = recommend(records).picks
    assert [(p.dataset, [r.model for r in p.front]) for p in picks] == [(IMAGENET, ["imagenet"]), (CIFAR, ["cifar"])]


def test_cli_recommend_without_constraints_prints_the_picks_and_the_front(tmp_path):
    path = tmp_path / "bench.json"
    records = _imagenet_like() + [_record("cifar20", 1.2, 91.73, dataset=CIFAR)]
    records[-1].eval_images, records[-1].accuracy_source = 40, "measured on cifar/test (40 images)"
    for record in records:
        record.load_avg_before, record.load_avg_after, record.cores = 0.4, 1.1, 2
    path.write_text(json.dumps([r.to_dict() for r in records]))
    result = CliRunner().invoke(app, ["recommend", "--from", str(path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("no constraints: one model per dataset") and "load average 0.40-1.10 on 2 cores" in lines[0]
    assert lines[1].startswith("ImageNet-1K val: effnet (p50 40.4 ms, top-1 77.69 % published): at the knee")
    assert lines[2] == ("   Pareto front, fastest first: shufflenet 20.8 ms 69.36 %, mobilenet 27.9 ms 71.88 %, "
                        "effnet 40.4 ms 77.69 %, resnet152 225.4 ms 78.31 %")
    assert lines[3].startswith("CIFAR-10 test (original images): cifar20 (p50 1.2 ms, top-1 91.73 % measured on 40 images): the "
                               "only model")  # which of the two a figure is: the header calls neither "measured"
    assert "latencies measured, top-1 as each record gives it, from records in" in lines[0]
    data = json.loads(CliRunner().invoke(app, ["recommend", "--from", str(path), "--json"]).output)
    assert [p["model"] for p in data["picks"]] == ["effnet", "cifar20"]


def test_cli_recommend_reads_records_of_older_versions(tmp_path):
    path = tmp_path / "old.json"
    row = _record("effnet", 40.4, 77.69).to_dict()
    row.update(processes=3, latency_ms_p50_per_process=[40.0, 40.4, 41.0])  # keys of an older bench file
    path.write_text(json.dumps([row]))
    result = CliRunner().invoke(app, ["recommend", "--from", str(path), "--max-latency-ms", "50"])
    assert result.exit_code == 0 and "1. effnet: p50 latency 40.40 ms <= 50" in result.output


def test_pick_warns_when_the_machine_was_busy_or_the_latencies_overlap():
    records = _imagenet_like()
    for record in records:
        record.latency_ms_p50_ci = [record.latency_ms_p50 * 0.97, record.latency_ms_p50 * 1.03]
        record.load_avg_before, record.load_avg_after, record.cores = 0.3, 0.6, 2
    (pick,) = recommend(records).picks
    assert pick.record.model == "effnet" and pick.caveats == []
    records[2].latency_ms_p50_ci = [27.0, 45.0]  # effnet's CI now reaches mobilenet's 27.9 ms
    records[0].load_avg_after = 5.5
    (pick,) = recommend(records).picks
    assert pick.caveats == [
        "the machine was busy while measuring (load average 0.30 before, 5.50 after, on 2 cores): the latencies, and so "
        "this pick, "
        "may not hold on an idle machine; measure again when it is idle",
        "its latency's 95 % confidence interval overlaps that of mobilenet: their order by latency is not certain"]
