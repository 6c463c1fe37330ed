"""Must hold: ``--resume`` after a kill at a random point reproduces an uninterrupted run.

``resnetkit train cifar_resnet20`` from scratch on a CIFAR-10 subset (``--per-class`` images
per class, 10 % held out for validation), CPU, ``--workers 0``, same seed. The uninterrupted
run is compared with (a) a run killed with SIGKILL at a random moment after its first
checkpoint and (b) one sent Ctrl-C (SIGINT) at a random moment, each then resumed.

    .venv/bin/python benchmarks/train_resume.py [--per-class 200] [--epochs 4]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from train_common import RESULTS, SHARED, add_threads_option, finish, subset, table

RESNETKIT = str(Path(sys.executable).with_name("resnetkit"))
KEYS = ("train_loss", "train_top1", "val_loss", "val_top1", "lr")


def command(data: Path, out: Path, epochs: int) -> list[str]:
    return [RESNETKIT, "train", "cifar_resnet20", str(data), "-o", str(out), "--epochs", str(epochs), "--batch-size", "64",
            "--workers", "0", "--seed", "0"]


def interrupted_run(argv: list[str], out: Path, env: dict[str, str], sig: int, latest: float, rng: random.Random) -> dict[str, Any]:
    """Start ``argv``, send ``sig`` at a random moment after the first checkpoint, then ``--resume``."""
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (out / "last.pt").exists():
        time.sleep(0.2)
    delay = rng.uniform(0, latest)
    time.sleep(delay)
    process.send_signal(sig)
    code = process.wait()
    epochs_done = len(json.loads((out / "metrics.json").read_text())["epochs"])
    subprocess.run([RESNETKIT, "train", "--resume", str(out)], env=env, check=True, capture_output=True)
    return {"signal": signal.Signals(sig).name, "seconds_after_first_checkpoint": round(delay, 1), "exit_code": code,
            "epochs_done_at_kill": epochs_done}


def max_difference(a: Path, b: Path) -> float:
    rows_a, rows_b = (json.loads((p / "metrics.json").read_text())["epochs"] for p in (a, b))
    assert len(rows_a) == len(rows_b), "different number of epochs"
    return max(abs(x[k] - y[k]) for x, y in zip(rows_a, rows_b) for k in KEYS)


def main(args: argparse.Namespace) -> dict[str, Any]:
    work = RESULTS / "train_resume"
    shutil.rmtree(work, ignore_errors=True)
    data = subset(SHARED / "data" / "cifar10" / "train", args.per_class, work / "data")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads or 1)}
    start = time.perf_counter()
    subprocess.run(command(data, work / "uninterrupted", args.epochs), env=env, check=True, capture_output=True)
    duration = time.perf_counter() - start
    rng = random.Random(args.seed)
    rows = []
    for sig in (signal.SIGKILL, signal.SIGINT):
        out = work / signal.Signals(sig).name.lower()
        row = interrupted_run(command(data, out, args.epochs), out, env, sig, 0.7 * duration * (1 - 1 / args.epochs), rng)
        row["max_abs_difference"] = max_difference(work / "uninterrupted", out)
        rows.append(row)
    print(table(rows, ["signal", "seconds_after_first_checkpoint", "exit_code", "epochs_done_at_kill", "max_abs_difference"]))
    final = json.loads((work / "uninterrupted" / "metrics.json").read_text())["epochs"][-1]
    result = {"train_images": 10 * args.per_class, "epochs": args.epochs, "uninterrupted_seconds": round(duration, 1),
              "uninterrupted_final": {k: final[k] for k in KEYS}, "rows": rows,
              "compared": list(KEYS), "reproduced": all(r["max_abs_difference"] < 1e-4 for r in rows)}
    print(f"uninterrupted final: {result['uninterrupted_final']}\nreproduced: {result['reproduced']}")
    return finish("train_resume", result)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=None, help="seed of the kill times (default: random)")
    add_threads_option(parser)
    main(parser.parse_args())
