"""Training throughput (img/s) of the engine's step: fp32 vs bf16 autocast vs channels_last.

Random weights and synthetic tensors (no data loading): it measures the forward + loss +
backward + SGD step that ``resnetkit train`` runs, via the engine's own StepRunner.

    .venv/bin/python benchmarks/train_throughput.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from resnetkit.train import TrainConfig
from resnetkit.train.engine import StepRunner
from resnetkit.train.objectives import CrossEntropyObjective
from resnetkit.train.optim import make_optimizer, param_groups
from resnetkit.zoo import get_spec

from train_common import add_threads_option, apply_threads, save, table

CASES = [("cifar_resnet20", 32, 128), ("resnet18", 224, 32)]
VARIANTS = {"fp32": {}, "bf16 autocast": {"amp": True}, "channels_last": {"channels_last": True},
            "bf16 + channels_last": {"amp": True, "channels_last": True}}


def measure(arch: str, size: int, batch: int, settings: dict[str, Any], seconds: float) -> dict[str, Any]:
    """img/s of full training steps after 2 warm-up steps, over at least 3 steps and ``seconds``."""
    torch.manual_seed(0)
    config = TrainConfig(task="train", model=arch, pretrained=False, **settings)
    module = get_spec(arch).build(10).to(memory_format=torch.channels_last if config.channels_last else torch.contiguous_format)
    optimizer = make_optimizer(param_groups(module.train(), get_spec(arch).head, config), config)
    step = StepRunner(module, optimizer, CrossEntropyObjective(), config, torch.device("cpu"))
    images, labels = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))

    def one() -> None:
        step.forward_backward(images, labels)
        step.optimizer_step()

    for _ in range(2):
        one()
    steps, start = 0, time.perf_counter()
    while steps < 3 or time.perf_counter() - start < seconds:
        one()
        steps += 1
    elapsed = time.perf_counter() - start
    return {"model": arch, "input": size, "batch": batch, "steps": steps, "img_per_s": steps * batch / elapsed,
            "step_ms": 1000 * elapsed / steps}


def main(args: argparse.Namespace) -> dict[str, Any]:
    apply_threads(args.threads)
    rows = []
    for arch, size, batch in CASES:
        for name, settings in VARIANTS.items():
            row = {"variant": name, **measure(arch, size, batch, settings, args.seconds)}
            rows.append(row)
            print(f"{arch} {name}: {row['img_per_s']:.1f} img/s", flush=True)
    print(table(rows, ["model", "input", "batch", "variant", "steps", "step_ms", "img_per_s"]))
    path = save("train_throughput", {"data": "synthetic tensors, random weights", "rows": rows})
    print(f"wrote {path}")
    return {"rows": rows}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="minimum timed seconds per case")
    add_threads_option(parser)
    main(parser.parse_args())
