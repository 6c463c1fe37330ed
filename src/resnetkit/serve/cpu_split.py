"""How many cores go to inference and how many to decoding, chosen by measuring the served models.

On a CPU box, decode + preprocess (worker threads) and the forward passes (the backend's
intra-op threads) compete for the same cores. Whether an OpenVINO or ONNX Runtime pool of N
threads beats one of N-1 next to a busy decoder depends on the model, the backend and the
CPU (a pool stalls at every layer's barrier while the decoder holds one of its cores; on the
other hand a thread fewer is a core idle whenever decoding keeps up). Rules of thumb got it
wrong here in both directions, so the server measures instead: for each candidate thread
count it runs the models in a short decode + batched-inference pipeline, as serving does,
and keeps the fastest.

On a GPU there is nothing to split: the forward passes run on the GPU (intra-op threads do not
apply), so every usable core decodes and nothing is measured.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence


from ..core.images import prepare_image, stack_inputs
from ..core.measure import timed_calls
from ..core.samples import typical_upload
from ..run.loading import Classifier

TRIAL_SECONDS = 1.0  # per candidate and model, after one warm-up batch
TRIAL_BATCH = 8  # images per forward pass in the trial: the mean batch under load (docs/serve.md)


@dataclass(frozen=True)
class CpuSplit:
    """Inference threads and decode workers, and the pipeline rates (images/s per thread count) behind them."""

    threads: int | None  # None: inference runs on the GPU ``gpu``
    workers: int
    cores: int
    rates: dict[int, float] = field(default_factory=dict)  # empty when --threads chose, or on a GPU
    gpu: str | None = None  # the GPU's name when the models run on one

    def describe(self) -> str:
        if self.gpu is not None:
            return f"GPU inference on {self.gpu}, {self.workers} decode worker(s) on {self.cores} cores"
        chosen = f"{self.threads} inference thread(s), {self.workers} decode worker(s) on {self.cores} cores"
        if not self.rates:
            return f"{chosen} (as asked)"
        measured = ", ".join(f"{threads} thread(s) {rate:.1f} img/s" for threads, rate in sorted(self.rates.items()))
        return f"{chosen} (measured decode + inference pipeline: {measured})"


def candidate_threads(cores: int) -> list[int]:
    """Inference thread counts worth trying: every core, one fewer, half of them."""
    return sorted({cores, max(1, cores - 1), max(1, cores // 2)})


def workers_for(threads: int, cores: int, workers: int | None = None) -> int:
    """Decode workers next to ``threads`` inference threads: the cores left, at least one (``workers`` wins)."""
    return workers or max(1, cores - threads)


def gpu_split(gpu: str, cores: int, workers: int | None = None) -> CpuSplit:
    """Inference on the GPU ``gpu``: every usable core decodes (``workers`` wins)."""
    return CpuSplit(None, workers or cores, cores, gpu=gpu)


def fastest_split(rates: dict[int, float], cores: int, workers: int | None = None) -> CpuSplit:
    """The split of the highest measured rate (fewer threads on a tie)."""
    threads = max(sorted(rates), key=lambda t: rates[t])
    return CpuSplit(threads, workers_for(threads, cores, workers), cores, {t: round(r, 1) for t, r in rates.items()})


def pipeline_rate(classifiers: Sequence[Classifier], workers: int, seconds: float = TRIAL_SECONDS) -> float:
    """Images per second of serving one typical upload to each model in turn: ``workers`` threads decode
    the next batch while the current one runs (as the server's pipeline does); the models' combined rate."""
    seconds_per_image = 0.0
    with ThreadPoolExecutor(workers) as pool:
        for classifier in classifiers:
            seconds_per_image += 1.0 / _model_rate(classifier, pool, seconds)
    return 1.0 / seconds_per_image


def _model_rate(classifier: Classifier, pool: ThreadPoolExecutor, seconds: float) -> float:
    preprocessing = classifier.meta.preprocessing
    upload = typical_upload(preprocessing)

    def submit() -> list:
        return [pool.submit(prepare_image, upload, preprocessing) for _ in range(TRIAL_BATCH)]

    classifier.probabilities(stack_inputs([f.result() for f in submit()]))  # warm-up
    pending = submit()

    def step() -> None:  # the next batch is decoded while this one runs, as in the server
        nonlocal pending
        batch = stack_inputs([f.result() for f in pending])
        pending = submit()
        classifier.probabilities(batch)

    steps_ms = timed_calls(step, min_seconds=seconds, sync=classifier.ran.device.synchronize)
    for future in pending:
        future.result()
    return TRIAL_BATCH * len(steps_ms) / (sum(steps_ms) / 1000.0)
