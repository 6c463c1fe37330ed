"""Before/after evidence for export, quantization and pruning.

Every optimization command reports how much smaller and faster its result is and how much
its predictions changed. The pieces live here so the three commands measure the same way:
input samples (real images or generated ones), logit agreement with the reference, latency
side by side, and accuracy on a labelled folder.
"""

from __future__ import annotations

import copy
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from ..backends.base import RunnerOptions, make_runner
from ..core.device import Device
from ..core.errors import DatasetError
from ..core.images import decode_image, iter_image_paths
from ..core.measure import InterleavedTimings, time_interleaved
from ..core.samples import generated_batches
from ..run.loading import Classifier
from ..core.spec import ModelMeta


def image_batches(data_dir: str | os.PathLike[str], meta: ModelMeta, *, limit: int, batch_size: int = 32,
                  seed: int = 0) -> list[torch.Tensor]:
    """Up to ``limit`` images of ``data_dir`` (walked recursively, a fixed random subset),
    preprocessed for ``meta``, in batches. Raises :class:`DatasetError` if there are none."""
    root = Path(data_dir)
    if root.is_file():
        raise DatasetError(f"{root} is a file: give a folder of images (any layout; class sub-folders are fine).")
    if not root.is_dir():
        raise DatasetError(f"No such folder: {root}. Give a folder of images (any layout; class sub-folders are fine).")
    paths = list(iter_image_paths([root]))
    if not paths:
        raise DatasetError(f"{root} contains no image files (looked for .jpg, .png, ... in all sub-folders).")
    random.Random(seed).shuffle(paths)
    transform = meta.preprocessing.transform()
    tensors = [transform(decode_image(p)) for p in paths[:limit]]
    return [torch.stack(tensors[i:i + batch_size]) for i in range(0, len(tensors), batch_size)]


def labelled_batches(data_dir: str | os.PathLike[str], meta: ModelMeta, *, limit: int, batch_size: int = 50,
                     seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Up to ``limit`` images of a class-per-folder ``data_dir`` (a fixed random subset), preprocessed for
    ``meta``, with their class indices in the model's categories, as (images, labels) batches."""
    from ..core.datasets import labelled_samples

    samples = labelled_samples(data_dir, meta.categories)[1]
    random.Random(seed).shuffle(samples)
    samples = samples[:limit]
    transform = meta.preprocessing.transform()
    images = torch.stack([transform(decode_image(s.path)) for s in samples])
    labels = torch.tensor([s.label for s in samples])
    return [(images[i:i + batch_size], labels[i:i + batch_size]) for i in range(0, len(samples), batch_size)]


def sample_batches(meta: ModelMeta, data_dir: str | os.PathLike[str] | None, *, count: int,
                   batch_size: int = 32, seed: int = 0) -> tuple[list[torch.Tensor], str]:
    """Real images from ``data_dir`` if given, else generated ones; and a description."""
    if data_dir is not None:
        batches = image_batches(data_dir, meta, limit=count, batch_size=batch_size, seed=seed)
        return batches, f"{sum(len(b) for b in batches)} images from {data_dir}"
    return generated_batches(meta, count=count, batch_size=batch_size, seed=seed), f"{count} generated random-pixel images"


@dataclass(frozen=True)
class Agreement:
    """How far a candidate's logits are from the reference's on the same inputs."""

    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float  # percent of inputs with the same top-1 class
    n_inputs: int
    inputs: str  # what the inputs were

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return (f"top-1 agreement {self.top1_agreement:.2f} % on {self.inputs}; "
                f"max |logit diff| {self.max_abs_diff:.3g}, mean {self.mean_abs_diff:.3g}")


def random_weights_notes(meta: ModelMeta) -> list[str]:
    """What a report on a model with random weights must not be read as."""
    if meta.weights != "random":
        return []
    return ["the model has random weights: size, MACs and latency are real, but the top-1 agreement means "
            "little (random logits are near-ties); use trained weights and --eval DIR to see the accuracy cost."]


def agreement(reference: Callable[[torch.Tensor], torch.Tensor], candidate: Callable[[torch.Tensor], torch.Tensor],
              batches: Sequence[torch.Tensor], inputs: str) -> Agreement:
    """Compare the logits of two runners over ``batches``."""
    max_diff, sum_diff, same, total, elements = 0.0, 0.0, 0, 0, 0
    for batch in batches:
        ref, cand = reference(batch).float(), candidate(batch).float()
        diff = (ref - cand).abs()
        max_diff = max(max_diff, float(diff.max()))
        sum_diff += float(diff.sum())
        elements += diff.numel()
        same += int((ref.argmax(1) == cand.argmax(1)).sum())
        total += len(batch)
    return Agreement(max_diff, sum_diff / max(elements, 1), 100.0 * same / max(total, 1), total, inputs)


LATENCY_SECONDS = 2.0  # minimum timed wall-clock per measurement
MAX_LATENCY_SECONDS = 8.0  # ... and at most, while the medians' confidence intervals still overlap
LATENCY_WARMUP = 3  # uncounted calls of each before the clock starts


def cpu_module(source: Classifier, command: str) -> nn.Module:
    """A copy of ``source``'s PyTorch module in fp32 on the CPU: what files are written from and pruning changes
    (``command`` names what needs it, for the error an exported file gets)."""
    return copy.deepcopy(source.torch_module(command)).float().cpu().eval()


def on_device(classifier: Classifier, device: Device) -> Classifier:
    """``classifier`` if it runs on ``device``, else its PyTorch module copied there on eager PyTorch in the
    precision it runs in: the reference of a latency comparison on the device of the model it is compared with."""
    ran = classifier.ran
    if str(ran.device) == str(device):
        return classifier
    options = RunnerOptions(precision=ran.precision, device=device)
    runner = make_runner(copy.deepcopy(classifier.torch_module("compare")), classifier.meta, "eager", options)
    return Classifier(classifier.meta, runner, classifier.module)


def synchronize_all(devices: Iterable[Device]) -> Callable[[], None] | None:
    """One hook that waits for every GPU among ``devices`` (None when they are all CPUs)."""
    hooks = list({str(d): d.synchronize for d in devices if d.synchronize is not None}.values())
    if not hooks:
        return None

    def synchronize() -> None:
        for hook in hooks:
            hook()
    return synchronize


def compare_latency(classifiers: Mapping[str, Classifier], batch_size: int = 1) -> InterleavedTimings:
    """Latency of several classifiers measured interleaved in one run, the way ``bench`` measures: short bursts
    of each in turn (3 warm-up calls each first), at least 10 counted calls each and ``LATENCY_SECONDS`` in all,
    then more rounds until each one's median is clear of the first one's (the reference: one measured reference
    for every comparison of the command run) or ``MAX_LATENCY_SECONDS``; with the CPU use of other processes
    meanwhile. Each one's input is on the device it runs on, and on a GPU the clock stops once the GPU has
    finished. Use its ``speedup(reference, other)`` for the "x faster" text: it says "within noise" or
    "not comparable: machine busy" when that is what was found."""
    calls, devices = {}, []
    for name, classifier in classifiers.items():
        device = classifier.ran.device
        batch = torch.randn(batch_size, *classifier.meta.preprocessing.input_shape, device=device.torch)
        calls[name] = lambda c=classifier, b=batch: c.runner(b)  # the model's cost, not the output check
        devices.append(device)
    return time_interleaved(calls, warmup=LATENCY_WARMUP, min_runs=10, min_seconds=LATENCY_SECONDS,
                            max_seconds=MAX_LATENCY_SECONDS, sync=synchronize_all(devices))


def eval_images(data_dir: str | os.PathLike[str], meta: ModelMeta, limit: int | None) -> str:
    """What a top-1 on the labelled folder ``data_dir`` is measured on: ``all 10000 images`` or ``500 of 10000
    images``. Checks the folder (it exists, its class folders match the model's classes) before anything is
    written."""
    from ..core.datasets import labelled_samples

    total = len(labelled_samples(data_dir, meta.categories)[1])
    return f"{limit} of {total} images" if limit is not None and limit < total else f"all {total} images"


@dataclass(frozen=True)
class LatencyMethod:
    """How the latencies of a report were measured (see :func:`compare_latency`)."""

    batch_size: int
    warmup: int  # uncounted calls of each before the clock starts
    runs: dict[str, int]  # counted calls of each: its latency is their median
    threads: dict[str, int | None]  # intra-op threads each ran on (None: its runtime's default)
    torch_threads: int  # PyTorch's default, what eager runs on
    cores: int  # of this machine

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        counts = sorted(set(self.runs.values()))
        runs = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        set_ = ", ".join(f"{name} {n}" for name, n in self.threads.items() if n)
        threads = set_ or f"each runtime's default (PyTorch's {self.torch_threads})"
        return (f"median of {runs} timed calls each at batch {self.batch_size} after {self.warmup} warm-up calls, "
                f"interleaved in short bursts; threads: {threads}, on {self.cores} cores")


def latency_method(timings: InterleavedTimings, classifiers: Mapping[str, Classifier], labels: Mapping[str, str],
                   batch_size: int) -> LatencyMethod:
    """The :class:`LatencyMethod` of ``timings`` of ``classifiers``, each named by its ``labels`` entry."""
    return LatencyMethod(batch_size, LATENCY_WARMUP, {labels[k]: t.runs for k, t in timings.timings.items()},
                         {labels[k]: c.ran.threads for k, c in classifiers.items()}, torch.get_num_threads(),
                         os.cpu_count() or 1)


def top1_accuracy(classifier: Classifier, data_dir: str | os.PathLike[str], limit: int | None = None) -> float:
    """Top-1 percent on a class-per-folder dataset, via :func:`resnetkit.run.evaluate.evaluate`."""
    from ..run.evaluate import evaluate

    return evaluate(classifier, data_dir, batch_size=64, limit=limit, workers=2, progress=None).top1


def ratio(before: float, after: float) -> str:
    """'2.04x'-style factor of ``before`` over ``after``, for deterministic quantities such as
    sizes. Latency factors come from :func:`compare_latency` instead, which measures both sides
    interleaved and says when they are not comparable."""
    return f"{before / after:.2f}x" if after else "inf"
