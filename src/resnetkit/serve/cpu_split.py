"""How many cores go to inference and how many to decoding, chosen by measuring the served models.

On a CPU box, decode + preprocess (worker threads) and the forward passes (the backend's
intra-op threads) compete for the same cores. Whether an OpenVINO or ONNX Runtime pool of N
threads beats one of N-1 next to a busy decoder depends on the model, the backend and the
CPU (a pool stalls at every layer's barrier while the decoder holds one of its cores; on the
other hand a thread fewer is a core idle whenever decoding keeps up). Rules of thumb got it
wrong here in both directions, so the server measures instead: for each candidate thread
count it runs the models in a short decode + batched-inference pipeline, as serving does,
and keeps the fastest.
"""

from __future__ import annotations

import io
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..core.images import prepare_image
from ..core.loading import Classifier
from ..core.spec import Preprocessing

TRIAL_SECONDS = 1.0  # per candidate and model, after one warm-up batch
TRIAL_BATCH = 8  # images per forward pass in the trial: the mean batch under load (docs/serve.md)


@dataclass(frozen=True)
class CpuSplit:
    """Inference threads and decode workers, and the pipeline rates (images/s per thread count) behind them."""

    threads: int
    workers: int
    cores: int
    rates: dict[int, float] = field(default_factory=dict)  # empty when --threads chose

    def describe(self) -> str:
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

    classifier.probabilities(torch.stack([f.result() for f in submit()]))  # warm-up
    pending, images, start = submit(), 0, time.perf_counter()
    while images == 0 or time.perf_counter() - start < seconds:
        batch = torch.stack([f.result() for f in pending])
        pending = submit()
        classifier.probabilities(batch)
        images += len(batch)
    elapsed = time.perf_counter() - start
    for future in pending:
        future.result()
    return images / elapsed


def runner_threads(classifier: Classifier) -> int:
    """The intra-op threads the classifier's runner was built with (the runtimes' default: every core)."""
    return getattr(classifier.runner, "threads", None) or available_cores()


def typical_upload(preprocessing: Preprocessing) -> bytes:
    """A JPEG the size clients usually send: the input size for tiny models, a 4:3 photo about 2.5x the
    resize size otherwise (640x480 for ImageNet models); smooth gradients plus noise, quality 90."""
    if preprocessing.crop_size <= 64:
        width = height = preprocessing.resize_size
    else:
        width, height = round(preprocessing.resize_size * 2.5), round(preprocessing.resize_size * 1.875)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 200
    pixels = np.clip(base + np.random.default_rng(0).normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, e.g. a container's cpuset), else the CPU count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1

