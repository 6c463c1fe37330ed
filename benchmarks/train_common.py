"""Helpers shared by the training benchmarks: result files, tables, the ../shared paths."""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
RESULTS = ROOT / "results"
CIFAR_WEIGHTS = {"cifar_resnet20": "resnet20-12fca82f.th", "cifar_resnet32": "resnet32-d509ac18.th"}


def import_shared_weights() -> None:
    """Put the real CIFAR-10 checkpoints from ../shared into the weights cache (hash-verified)."""
    from resnetkit.core import weights
    from resnetkit.core.zoo import get_spec

    for model, file in CIFAR_WEIGHTS.items():
        spec = get_spec(model)
        if not weights.cached_path(spec.default_weights).is_file():
            weights.import_file(model, spec.default_weights, SHARED / "weights" / "cifar10" / file)


def machine() -> dict[str, Any]:
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's; 1 is faster on a CPU shared with other jobs)")


def apply_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def save(name: str, data: dict[str, Any]) -> Path:
    """``results/<name>.json`` with the machine description added."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2) + "\n")
    return path


def finish(name: str, result: dict[str, Any]) -> dict[str, Any]:
    """Save ``result`` as ``results/<name>.json``, say where, and return it."""
    print(f"wrote {save(name, result)}")
    return result


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain-text table of ``columns`` of ``rows``."""
    cells = [[_fmt(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return "-" if value is None else str(value)


def subset(source: Path, per_class: int, target: Path) -> Path:
    """``target/<class>/`` with symlinks to the first ``per_class`` files (sorted) of each class."""
    shutil.rmtree(target, ignore_errors=True)
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        (target / folder.name).mkdir(parents=True)
        for file in sorted(folder.iterdir())[:per_class]:
            (target / folder.name / file.name).symlink_to(file)
    return target
