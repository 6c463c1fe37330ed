"""Training throughput (img/s) of the engine's step: fp32 vs bf16 autocast vs channels_last.

Random weights and synthetic tensors (no data loading): it measures the forward + loss +
backward + SGD step that ``resnetkit train`` runs, via the engine's own StepRunner. The
variants are timed in interleaved rounds and each keeps its best round, so a neighbour's
load on a shared CPU biases no variant more than another.

    .venv/bin/python benchmarks/train_throughput.py [--rounds 4] [--steps 3] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any, Callable

import torch

from resnetkit.train import TrainConfig
from resnetkit.train.engine import StepRunner
from resnetkit.train.objectives import CrossEntropyObjective
from resnetkit.train.optim import make_optimizer, param_groups
from resnetkit.core.zoo import get_spec

from train_common import add_threads_option, apply_threads, finish, table

CASES = [("cifar_resnet20", 32, 128), ("resnet18", 224, 32)]
VARIANTS = {"fp32": {}, "bf16 autocast": {"amp": True}, "channels_last": {"channels_last": True},
            "bf16 + channels_last": {"amp": True, "channels_last": True}}


def make_step(arch: str, size: int, batch: int, settings: dict[str, Any]) -> Callable[[], None]:
    """One full training step of ``arch`` on a fixed random batch, warmed up twice."""
    torch.manual_seed(0)
    config = TrainConfig(task="train", model=arch, pretrained=False, **settings)
    module = get_spec(arch).build(10).to(memory_format=config.memory_format)
    optimizer = make_optimizer(param_groups(module.train(), get_spec(arch).head, config), config)
    runner = StepRunner(module, optimizer, CrossEntropyObjective(), config, torch.device("cpu"))
    images, labels = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))

    def step() -> None:
        runner.forward_backward(images, labels)
        runner.optimizer_step()

    step()
    step()
    return step


def timed(step: Callable[[], None], steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main(args: argparse.Namespace) -> dict[str, Any]:
    apply_threads(args.threads)
    load_before = os.getloadavg()[0]
    rows = []
    for arch, size, batch in CASES:
        steps = {name: make_step(arch, size, batch, settings) for name, settings in VARIANTS.items()}
        best = {name: float("inf") for name in VARIANTS}
        for _ in range(args.rounds):
            for name, step in steps.items():
                best[name] = min(best[name], timed(step, args.steps))
        for name, seconds in best.items():
            rows.append({"model": arch, "input": size, "batch": batch, "variant": name, "step_ms": 1000 * seconds,
                         "img_per_s": batch / seconds, "speedup": best["fp32"] / seconds})
    print(table(rows, ["model", "input", "batch", "variant", "step_ms", "img_per_s", "speedup"]))
    load = {"load_avg_1min_before": load_before, "load_avg_1min_after": os.getloadavg()[0]}
    print(f"load average (1 min) before/after: {load['load_avg_1min_before']:.2f} / {load['load_avg_1min_after']:.2f}")
    return finish("train_throughput", {"data": "synthetic tensors, random weights, SGD step", "rounds": args.rounds,
                                       "steps_per_round": args.steps, **load, "rows": rows})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds; each variant keeps its best")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant and round")
    add_threads_option(parser)
    main(parser.parse_args())
