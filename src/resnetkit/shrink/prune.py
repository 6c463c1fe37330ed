"""Pruning: global L1 unstructured (sparsity only) or dependency-aware channel pruning.

Channel pruning uses torch-pruning's dependency graph, so layers joined by residual adds
lose the same channels and the network stays consistent; the result is a smaller dense
network saved as a ``.pt`` artifact whose layer shapes rebuild the architecture on load.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from ..backends.base import RunnerOptions, make_runner
from ..core.device import CPU, Device
from ..core.artifacts import save_artifact
from ..core.errors import ResnetkitError
from ..run.loading import Classifier
from ..core.measure import count_macs, count_params, serialized_size_bytes
from ..core.spec import ModelMeta, Step
from ..core.zoo import get_spec
from .compare import (Agreement, LatencyMethod, agreement, compare_latency, cpu_module, eval_images, latency_method,
                      on_device, random_weights_notes, sample_batches, top1_accuracy)
from .export import check_output_path

METHODS = ("l1-unstructured", "channel")
CHECK_IMAGES = 256


class PruningError(ResnetkitError):
    """A pruning request that cannot be carried out."""


@dataclass
class PruneReport:
    """Before/after cost and predictions of one pruning run."""

    name: str  # the pruned model's name (the output file's stem)
    source: str  # the model it was made from
    method: str
    amount: float
    path: str
    params_before: int
    params_after: int  # non-zero parameters for l1-unstructured
    macs_before: int
    macs_after: int
    size_bytes_before: int
    size_bytes_after: int
    batch_size: int
    latency_ms_before: float
    latency_ms_after: float
    agreement: Agreement
    sparsity: float | None = None  # fraction of zero weights in conv/linear layers
    round_to: int | None = None
    widths: dict[str, list[int]] = field(default_factory=dict)  # layer -> [before, after] out channels
    eval_dir: str | None = None
    top1_before: float | None = None
    top1_pruned: float | None = None
    top1_finetuned: float | None = None
    finetune: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    speedup: str = ""  # after vs before, from latencies measured interleaved in one run (or why not comparable)
    device: str = "cpu"  # where both latencies were measured (eager PyTorch)
    device_name: str = "CPU"
    eval_images: str | None = None  # what of eval_dir the top-1s are on: "all 10000 images", "500 of 10000 images"
    latency_method: LatencyMethod | None = None  # how the latencies were measured

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def weight_layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def l1_unstructured(module: nn.Module, amount: float) -> float:
    """Zero the ``amount`` smallest-magnitude conv/linear weights network-wide, make it
    permanent (no masks left) and return the resulting sparsity."""
    targets = [(layer, "weight") for layer in weight_layers(module)]
    torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=amount)
    for layer, name in targets:
        torch_prune.remove(layer, name)
    return sparsity(module)


def sparsity(module: nn.Module) -> float:
    weights = [layer.weight for layer in weight_layers(module)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / sum(w.numel() for w in weights)


def kept_channels(channels: int, amount: float, round_to: int) -> int:
    """The output channels a layer of ``channels`` keeps when ``amount`` of them are removed: the multiple of
    ``round_to`` nearest to ``channels * (1 - amount)``, at least one multiple (a layer of ``round_to`` channels or
    fewer keeps them all). Never more for a larger ``amount``."""
    if channels <= round_to:
        return channels
    return min(channels, max(round_to, round_to * math.floor(channels * (1 - amount) / round_to + 0.5)))


def channel_prune(module: nn.Module, meta: ModelMeta, amount: float, round_to: int) -> None:
    """Remove ``amount`` of the output channels of every prunable conv (the lowest L1 norms of each coupled group),
    as near as keeping the counts multiples of ``round_to`` allows (:func:`kept_channels`). The classifier and the
    layers the family's :class:`~resnetkit.core.spec.PruningTraits` keep lose no outputs.

    Each layer is given its own ratio: torch-pruning's ``round_to`` rounds the kept count down after taking
    ``int(channels * (1 - ratio))``, so 0.3 of 16 channels removed 8 and 0.9 removed none (all but 0 kept, refused)."""
    import torch_pruning as tp

    spec = get_spec(meta.arch)
    if not spec.pruning.prunable:
        raise PruningError(f"Channel pruning is unsupported for {meta.arch}: {spec.pruning.unsupported}. "
                           "Use --method l1-unstructured, or a ResNet.")
    ignored = [*spec.pruning.keep(module), module.get_submodule(spec.head)]
    # + 0.5: torch-pruning keeps int(channels * (1 - ratio)) channels, which must not fall one short by rounding
    ratios = {conv: 1 - (kept_channels(conv.out_channels, amount, round_to) + 0.5) / conv.out_channels
              for conv in module.modules() if isinstance(conv, nn.Conv2d) and conv not in ignored}
    example = torch.zeros(1, *meta.preprocessing.input_shape)
    try:
        pruner = tp.pruner.MetaPruner(module, example, importance=tp.importance.GroupMagnitudeImportance(p=1),
                                      pruning_ratio=0.0, pruning_ratio_dict=ratios, ignored_layers=ignored)
        pruner.step()
    except Exception as exc:  # torch-pruning raises plain errors for graphs it cannot follow
        raise PruningError(f"Channel pruning is unsupported for {meta.arch}: torch-pruning failed ({exc}).") from None


def _check_pruned(before: dict[str, int], after: dict[str, int], amount: float, round_to: int) -> None:
    """Refuse a channel pruning that removed nothing, saying from what amount it would."""
    if before == after:
        widest = max(before.values())
        raise PruningError(f"--amount {amount:g} removes no channel: channel counts stay multiples of {round_to}, so "
                           f"the widest layer ({widest} channels) loses some only above --amount "
                           f"{round_to / (2 * widest):.3g}. Give a larger --amount or a smaller --round-to.")


def conv_widths(module: nn.Module) -> dict[str, int]:
    return {name: layer.out_channels for name, layer in module.named_modules() if isinstance(layer, nn.Conv2d)}


def check_prune_request(method: str, amount: float, output: str | os.PathLike[str]) -> Path:
    """The output path, once method and amount are known to be valid (before any model is loaded)."""
    if method not in METHODS:
        raise PruningError(f"Unknown pruning method '{method}'. Choose one of: {', '.join(METHODS)}.")
    if not 0.0 < amount < 1.0:
        raise PruningError(f"--amount must be between 0 and 1 (a fraction), got {amount}.")
    return check_output_path(output, ".pt", "Pruned models")


def prune(
    source: Classifier,
    method: str,
    output: str | os.PathLike[str],
    *,
    amount: float = 0.3,
    round_to: int | None = None,
    finetune_dir: str | None = None,
    epochs: int = 1,
    lr: float = 0.01,
    eval_dir: str | None = None,
    eval_limit: int | None = None,
    batch_size: int = 1,
    workers: int = 2,
    check_images: int = CHECK_IMAGES,
    device: Device = CPU,
) -> PruneReport:
    """Prune the loaded model ``source`` with ``method``, optionally fine-tune, save to ``output`` (.pt) and measure.
    Pruning, fine-tuning and saving work on an fp32 copy of the model on the CPU; the latencies before and after
    are measured on ``device`` (eager PyTorch, fp32)."""
    path = check_prune_request(method, amount, output)
    meta, shape = source.meta, source.meta.preprocessing.input_shape
    evaluated = eval_images(eval_dir, meta, eval_limit) if eval_dir else None  # a bad folder fails before the work
    module = cpu_module(source, "prune")
    round_to = round_to or get_spec(meta.arch).pruning.round_to
    report_sparsity = l1_unstructured(module, amount) if method == "l1-unstructured" else None
    before = conv_widths(source.module)
    if method == "channel":
        channel_prune(module, meta, amount, round_to)
        _check_pruned(before, conv_widths(module), amount, round_to)
    pruned = Classifier(meta, make_runner(module, meta, "eager", RunnerOptions(precision="fp32", device=CPU)), module)
    after = conv_widths(module)
    check, inputs = sample_batches(meta, eval_dir or finetune_dir, count=check_images, seed=1)
    timed = {"before": on_device(source, device), "after": on_device(pruned, device)}
    timings = compare_latency(timed, batch_size)
    report = PruneReport(
        name=path.stem, source=meta.name, method=method, amount=amount, path=str(path),
        params_before=count_params(source.module),
        params_after=count_params(module) if method == "channel" else _nonzero_params(module),
        macs_before=count_macs(source.module, shape), macs_after=count_macs(module, shape),
        size_bytes_before=serialized_size_bytes(source.module), size_bytes_after=0,
        batch_size=batch_size,
        latency_ms_before=timings.timings["before"].p50_ms, latency_ms_after=timings.timings["after"].p50_ms,
        speedup=timings.speedup("before", "after")[1],
        agreement=agreement(source.logits, pruned.logits, check, inputs),
        sparsity=report_sparsity, round_to=round_to if method == "channel" else None,
        widths={name: [before[name], after[name]] for name in before if before[name] != after[name]},
        notes=_notes(method) + random_weights_notes(meta),
        device=str(device), device_name=device.name,
        latency_method=latency_method(timings, timed, {"before": "before", "after": "after"}, batch_size),
    )
    if eval_dir:
        report.eval_dir, report.eval_images = str(eval_dir), evaluated
        report.top1_before = top1_accuracy(source, eval_dir, eval_limit)
        report.top1_pruned = top1_accuracy(pruned, eval_dir, eval_limit)
    if finetune_dir:
        report.finetune = finetune(module, meta, finetune_dir, epochs=epochs, lr=lr, workers=workers)
        if eval_dir:
            report.top1_finetuned = top1_accuracy(pruned, eval_dir, eval_limit)
    step = Step("prune", method, {"amount": amount, "round_to": report.round_to,
                                  "finetune_epochs": epochs if finetune_dir else 0})
    save_artifact(path, module, meta.derived(path.stem, step))
    report.size_bytes_after = path.stat().st_size
    return report


def _nonzero_params(module: nn.Module) -> int:
    return sum(int((p != 0).sum()) for p in module.parameters())


def _notes(method: str) -> list[str]:
    if method == "l1-unstructured":
        return ["unstructured zeros do not make dense kernels faster and the file keeps its size (zeros are "
                "stored); latency is unchanged by design. Use --method channel for a smaller, faster network."]
    return ["fewer MACs do not translate one-to-one into latency (memory traffic, per-layer overheads)."]


def finetune(module: nn.Module, meta: ModelMeta, train_dir: str, *, epochs: int, lr: float, workers: int) -> dict[str, Any]:
    """Short recovery training of the pruned module in place, with the training engine.
    Zero weights are masked during training so unstructured sparsity survives it."""
    from ..train import finetune_module

    layers = weight_layers(module)
    for layer in layers:
        torch_prune.custom_from_mask(layer, "weight", mask=layer.weight != 0)
    try:
        return finetune_module(module, meta, train_dir, epochs=epochs, lr=lr, workers=workers)
    finally:
        for layer in layers:
            torch_prune.remove(layer, "weight")
        module.eval()
