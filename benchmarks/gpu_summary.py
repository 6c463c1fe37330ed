"""The markdown summary of ``scripts/gpu_check.sh``: each GPU check's measured figures against its bound.

    python benchmarks/gpu_summary.py results/gpu > results/gpu/summary.md

Reads what the steps wrote (a missing file is reported as not run) and prints markdown.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any


def read(folder: Path, name: str) -> Any:
    path = folder / name
    return json.loads(path.read_text()) if path.is_file() else None


def verdict(value: float | None, bound: float, at_least: bool) -> str:
    if value is None:
        return "not measured"
    return "yes" if (value >= bound if at_least else value <= bound) else "**no**"


def tests_line(folder: Path) -> str:
    report = folder / "tests.xml"
    if not report.is_file():
        return "gpu tests: not run"
    totals = {key: 0 for key in ("tests", "failures", "errors", "skipped")}
    for suite in ET.parse(report).getroot().iter("testsuite"):
        for key in totals:
            totals[key] += int(suite.get(key, 0))
    failed = totals["failures"] + totals["errors"]
    return (f"gpu tests (`pytest -m gpu`): {totals['tests'] - failed - totals['skipped']} passed, {failed} failed, "
            f"{totals['skipped']} skipped")


def checks(folder: Path) -> list[tuple[str, str, str, str, str]]:
    """(check, resnetkit, plain PyTorch, bound, holds) rows."""
    rows = []
    reference = read(folder, "reference.json") or {}
    if throughput := reference.get("throughput"):
        cells = throughput["rows"]
        rows.append(("resnet50 batch 256 fp16, img/s", f"{cells['resnetkit']['img_s']:.0f} ({throughput['resnetkit_ran']})",
                     f"{cells['plain eager']['img_s']:.0f} (eager fp16 channels-last)",
                     ">= 0.95x", f"{throughput['ratio_vs_plain_eager']:.2f}x: "
                     + verdict(throughput["ratio_vs_plain_eager"], 0.95, True)))
        if "resnetkit compile" in cells:
            rows.append(("same, torch.compile, img/s", f"{cells['resnetkit compile']['img_s']:.0f} (compile backend)",
                         f"{cells['plain torch.compile']['img_s']:.0f} (plain torch.compile)", ">= 0.95x",
                         f"{throughput['ratio_compile_vs_plain_compile']:.2f}x: "
                         + verdict(throughput["ratio_compile_vs_plain_compile"], 0.95, True)))
    if latency := reference.get("latency"):
        cells = latency["rows"]
        rows.append(("resnet50 batch 1, ms", f"{cells['resnetkit']['ms']:.3f} ({latency['resnetkit_ran']}; input copy "
                     "included)", f"{cells['plain CUDA graph']['ms']:.3f} (CUDA-graph replay)", "<= 1.3x",
                     f"{latency['ratio_vs_plain_graph']:.2f}x: " + verdict(latency["ratio_vs_plain_graph"], 1.3, False)))
    if fidelity := reference.get("fidelity"):
        for model, cells in fidelity["rows"].items():
            for precision in ("fp16", "bf16"):
                agreement = cells[precision]["agreement_with_cpu_fp32"]
                rows.append((f"{model} {precision} top-1 agreement with CPU fp32 ({fidelity['images']} images)",
                             f"{agreement:.2f} % (top-1 {cells[precision]['top1']:.2f} %)",
                             f"CPU fp32 top-1 {cells['cpu_fp32_top1']:.2f} %", ">= 99 %",
                             verdict(agreement, 99.0, True)))
    if predict := read(folder, "predict.json"):
        names = list(predict["img_s"])
        rows.append((f"predict resnet50, {predict['images']} JPEGs, img/s", f"{predict['img_s'][names[1]]:.0f}",
                     f"{predict['img_s'][names[0]]:.0f} (DataLoader, {predict['plain_workers']} workers, fp16)",
                     ">= 0.9x", f"{predict['ratio']:.2f}x: " + verdict(predict["ratio"], 0.9, True)))
    if train := read(folder, "train.json"):
        ratio = train.get("ratio")
        rows.append((f"train {train.get('model')} batch {train.get('batch_size')}, img/s",
                     f"{train.get('folder_img_s', 0):.0f} (defaults, JPEG folders)",
                     f"{train.get('synthetic_img_s', 0):.0f} (same step, synthetic data)", ">= 0.75x",
                     (f"{ratio:.2f}x: " if ratio is not None else "") + verdict(ratio, 0.75, True)))
    return rows


def seeds_table(folder: Path) -> list[str]:
    records = read(folder, "seeds.json")
    if not records:
        return ["bench's GPU table: not run"]
    lines = ["| model | ms per batch of 16 | GPU MB | img/s | batch-1 p50 ms | best batch | img/s there |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in records:
        per_batch = r["batch_size"] / r["throughput_ips"] * 1000 if r.get("throughput_ips") else None
        cells = [r["model"], f"{per_batch:.2f}" if per_batch else "-", f"{r.get('gpu_peak_mb') or 0:.0f}",
                 f"{r.get('throughput_ips') or 0:.0f}", f"{r['latency_ms_p50']:.2f}", str(r.get("best_batch_size", "-")),
                 f"{r.get('best_throughput_ips') or 0:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "results/gpu")
    reference = read(folder, "reference.json") or {}
    device = reference.get("device", {})
    print(f"# GPU check on {device.get('name', 'a GPU')} (driver {device.get('driver')}, CUDA {device.get('cuda')}, "
          f"torch {reference.get('torch')})\n")
    print(tests_line(folder) + "\n")
    print("| check | resnetkit | plain PyTorch, same run | must hold | holds |\n| --- | --- | --- | --- | --- |")
    for row in checks(folder):
        print("| " + " | ".join(row) + " |")
    print("\n## bench: the seeds' setting (batch 16, 224x224, fp32) on this GPU\n")
    print("\n".join(seeds_table(folder)))


if __name__ == "__main__":
    main()
