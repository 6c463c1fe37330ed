"""Must hold: distilling cifar_resnet32 into cifar_resnet20 (from scratch) beats the same student
trained the same budget without the teacher, on ../shared/data/cifar10/test.

Both runs use the engine's ``distill_with_baseline``: same subset of CIFAR-10 train (the first
``--per-class`` images of each class), epochs, schedule, augmentation and seed; no validation
during training; the final weights (``last.pt``) of each are then evaluated on the full test set.

    .venv/bin/python benchmarks/train_distill.py [--per-class 1000] [--epochs 6]
"""

from __future__ import annotations

import argparse
import shutil
import time
from typing import Any

from resnetkit.run.evaluate import evaluate
from resnetkit.train import TrainConfig
from resnetkit.train.distill import BASELINE_DIR, distill_with_baseline

from train_common import RESULTS, SHARED, add_threads_option, apply_threads, finish, import_shared_weights, subset, table

CIFAR = SHARED / "data" / "cifar10"


def main(args: argparse.Namespace) -> dict[str, Any]:
    apply_threads(args.threads)
    import_shared_weights()
    work = RESULTS / "train_distill"
    shutil.rmtree(work, ignore_errors=True)
    data = subset(CIFAR / "train", args.per_class, work / "data")
    config = TrainConfig(task="distill", model="cifar_resnet20", pretrained=False, teacher="cifar_resnet32",
                         data_dir=str(data), out_dir=str(work / "run"), val_split=0.0, epochs=args.epochs, lr=0.1,
                         weight_decay=5e-4, batch_size=128, amp=True, temperature=args.temperature, alpha=args.alpha,
                         seed=0)
    start = time.perf_counter()
    distill_with_baseline(config, progress_bar=False)
    train_seconds = time.perf_counter() - start
    rows = []
    for name, folder in (("teacher cifar_resnet32 (published weights)", None), ("student distilled", work / "run"),
                         ("student baseline (no teacher)", work / "run" / BASELINE_DIR)):
        model = "cifar_resnet32" if folder is None else str(folder / "last.pt")
        report = evaluate(model, CIFAR / "test", batch_size=256, workers=0, progress=False)
        rows.append({"model": name, "test_top1": report.top1, "test_images": report.n_images})
    print(table(rows, ["model", "test_top1", "test_images"]))
    result = {"train_images": 10 * args.per_class, "epochs": args.epochs, "temperature": args.temperature,
              "alpha": args.alpha, "batch_size": 128, "amp": "bf16", "train_seconds_both_runs": round(train_seconds, 1),
              "rows": rows, "distilled_beats_baseline": rows[1]["test_top1"] > rows[2]["test_top1"]}
    print(f"distilled beats baseline: {result['distilled_beats_baseline']} ({train_seconds:.0f} s of training)")
    return finish("train_distill", result)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=1000, help="training images per class (of 5000)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.9)
    add_threads_option(parser)
    main(parser.parse_args())
