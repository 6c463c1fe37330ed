"""Must hold: fine-tuning cifar_resnet32 (CIFAR-10 weights) on ../shared/data/hymenoptera in head
and last-stage modes is clearly better than training the same model from scratch.

Runs the real commands (``resnetkit finetune`` / ``resnetkit train``) with their default
settings, the same epochs and seed; accuracy on hymenoptera/val (153 images), which the
commands pick up as the validation folder.

    .venv/bin/python benchmarks/train_finetune.py [--epochs 12]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from train_common import RESULTS, SHARED, add_threads_option, finish, import_shared_weights, table

RESNETKIT = str(Path(sys.executable).with_name("resnetkit"))
DATA = SHARED / "data" / "hymenoptera"
RUNS = {"finetune head": ["finetune", "cifar_resnet32", "--mode", "head"],
        "finetune last-stage": ["finetune", "cifar_resnet32", "--mode", "last-stage"],
        "from scratch": ["train", "cifar_resnet32"]}


def launch(command: list[str], out: Path, epochs: int, threads: int | None) -> dict[str, Any]:
    """Run one command, return its JSON summary (its log goes to ``out``.log)."""
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    argv = [RESNETKIT, command[0], command[1], str(DATA), *command[2:], "-o", str(out), "--epochs", str(epochs), "--json"]
    print("$ resnetkit " + " ".join(argv[1:]), flush=True)
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    out.with_suffix(".log").write_text(done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def main(args: argparse.Namespace) -> dict[str, Any]:
    import_shared_weights()
    work = RESULTS / "train_finetune"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rows = []
    for name, command in RUNS.items():
        summary = launch(command, work / name.replace(" ", "_"), args.epochs, args.threads)
        best, final = summary["best"], summary["final"]
        rows.append({"run": name, "epochs": summary["epochs_run"], "final_val_top1": final["val_top1"],
                     "best_val_top1": best["val_top1"], "best_epoch": summary["best_epoch"],
                     "skipped_per_epoch": final["skipped"], "train_images": summary["train_images"],
                     "val_images": summary["val_images"], "seconds": summary["seconds"]})
    print(table(rows, ["run", "epochs", "final_val_top1", "best_val_top1", "best_epoch", "skipped_per_epoch", "seconds"]))
    scratch = rows[-1]["final_val_top1"]
    result = {"data": str(DATA), "rows": rows,
              "finetuned_better": all(r["final_val_top1"] > scratch for r in rows[:-1])}
    print(f"fine-tuned better than scratch (final epoch): {result['finetuned_better']}")
    return finish("train_finetune", result)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    add_threads_option(parser)
    main(parser.parse_args())
