"""How the cores are shared between the forward passes and decoding, chosen by measuring the served models.

On a CPU box, decode + preprocess (worker threads) and the forward passes (the backend's
intra-op threads) compete for the same cores. A model runs as one or more *instances*: copies
of its runner, each with its own intra-op threads, running batches at the same time. One
instance with a thread per core stalls at every layer's barrier while a decoder holds one of
its cores; one thread fewer leaves a core idle whenever decoding keeps up; instances of one
thread each have no barrier to stall, at the cost of a copy of the model each. Which wins
depends on the model, the backend and the CPU (rules of thumb got it wrong here in every
direction), so the server measures instead: for each candidate layout it runs the models in a
short decode + batched-inference pipeline, as serving does, and keeps the fastest.

On a GPU there is nothing to split: the forward passes run on the GPU (intra-op threads do not
apply), so every usable core decodes, one instance per model, and nothing is measured.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Sequence

import torch

from ..core.images import prepare_image, stack_inputs
from ..core.measure import timed_calls
from ..core.samples import typical_upload
from ..run.loading import Classifier

TRIAL_SECONDS = 1.0  # per candidate and model, after one warm-up batch
TRIAL_BATCH = 8  # images per forward pass in the trial: the mean batch under load (docs/serve.md)


@dataclass(frozen=True)
class CpuSplit:
    """Instances per model and their inference threads, decode workers, and the pipeline rates behind them."""

    threads: int | None  # intra-op threads of each instance; None: inference runs on the GPU ``gpu``
    workers: int
    cores: int
    # images/s per (instances, threads) layout; empty when --threads/--instances chose, or on a GPU
    rates: dict[tuple[int, int], float] = field(default_factory=dict)
    gpu: str | None = None  # the GPU's name when the models run on one
    instances: int = 1  # copies of each model running batches at once

    @property
    def alone_threads(self) -> int | None:
        """Threads of the extra copy that runs a batch with nothing else in flight: all the instances' threads
        (None with one instance, which has them already, or on a GPU)."""
        return self.instances * self.threads if self.threads and self.instances > 1 else None

    def describe(self) -> str:
        if self.gpu is not None:
            return f"GPU inference on {self.gpu}, {self.workers} decode worker(s) on {self.cores} cores"
        alone = f" (and one on {self.alone_threads} threads for a lone batch)" if self.alone_threads else ""
        chosen = (f"{self.instances} instance(s) x {self.threads} inference thread(s) per model{alone}, {self.workers} "
                  f"decode worker(s) on {self.cores} cores")
        if not self.rates:
            return f"{chosen} (as asked)"
        measured = ", ".join(f"{instances} x {threads} thread(s) {rate:.1f} img/s"
                             for (instances, threads), rate in sorted(self.rates.items()))
        return f"{chosen} (measured decode + inference pipeline: {measured})"


def candidate_layouts(cores: int) -> list[tuple[int, int]]:
    """(instances, threads) worth trying: one instance on every core, one fewer or half of them; 2 or 4 instances
    sharing the cores."""
    single = {(1, max(1, threads)) for threads in (cores, cores - 1, cores // 2)}
    return sorted(single | {(instances, cores // instances) for instances in (2, 4) if instances <= cores})


def layout_for(cores: int, threads: int | None, instances: int | None) -> tuple[int, int]:
    """The (instances, threads) asked for with --instances and/or --threads: one instance unless told; threads to
    share the cores between the instances unless told."""
    instances = instances or 1
    return instances, threads or max(1, cores // instances)


def workers_for(inference_threads: int, cores: int, workers: int | None = None) -> int:
    """Decode workers next to ``inference_threads`` threads in all: the cores left, at least one (``workers`` wins)."""
    return workers or max(1, cores - inference_threads)


def gpu_split(gpu: str, cores: int, workers: int | None = None) -> CpuSplit:
    """Inference on the GPU ``gpu``: every usable core decodes (``workers`` wins)."""
    return CpuSplit(None, workers or cores, cores, gpu=gpu)


def fixed_split(instances: int, threads: int, cores: int, workers: int | None = None) -> CpuSplit:
    """The layout as asked, measured or not: its decode workers are the cores its threads leave."""
    return CpuSplit(threads, workers_for(instances * threads, cores, workers), cores, instances=instances)


def fastest_split(rates: dict[tuple[int, int], float], cores: int, workers: int | None = None) -> CpuSplit:
    """The layout of the highest measured rate (on a tie, fewer threads in all, then fewer instances)."""
    instances, threads = max(sorted(rates, key=lambda layout: (layout[0] * layout[1], layout[0])),
                             key=lambda layout: rates[layout])
    chosen = fixed_split(instances, threads, cores, workers)
    return replace(chosen, rates={layout: round(rate, 1) for layout, rate in rates.items()})


def pipeline_rate(models: Sequence[Sequence[Classifier]], workers: int, seconds: float = TRIAL_SECONDS) -> float:
    """Images per second of serving one typical upload to each model in turn, each model given as its instances:
    ``workers`` threads decode the next batch while the current ones run (as the server's pipeline does); the
    models' combined rate."""
    seconds_per_image = 0.0
    with ThreadPoolExecutor(workers) as pool:
        for instances in models:
            seconds_per_image += 1.0 / _model_rate(instances, pool, seconds)
    return 1.0 / seconds_per_image


def _model_rate(instances: Sequence[Classifier], pool: ThreadPoolExecutor, seconds: float) -> float:
    """Images/s of ``instances`` running batches at once, each decoding its next batch while its current one runs."""
    preprocessing = instances[0].meta.preprocessing
    upload = typical_upload(preprocessing)

    def submit() -> list[Future[torch.Tensor]]:
        return [pool.submit(prepare_image, upload, preprocessing) for _ in range(TRIAL_BATCH)]

    for classifier in instances:  # warm-up
        classifier.probabilities(stack_inputs([f.result() for f in submit()]))

    def lane(classifier: Classifier) -> float:
        pending = submit()

        def step() -> None:  # the next batch is decoded while this one runs, as in the server
            nonlocal pending
            batch = stack_inputs([f.result() for f in pending])
            pending = submit()
            classifier.probabilities(batch)

        steps_ms = timed_calls(step, min_seconds=seconds, sync=classifier.ran.device.synchronize)
        wait(pending)
        return TRIAL_BATCH * len(steps_ms) / (sum(steps_ms) / 1000.0)

    with ThreadPoolExecutor(len(instances), thread_name_prefix="trial-instance") as lanes:
        return sum(lanes.map(lane, instances))  # the instances ran side by side for the same seconds
