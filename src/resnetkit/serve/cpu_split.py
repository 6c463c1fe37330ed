"""How many cores go to inference and how many to decoding, from the served models' measured costs.

On a CPU box, decode + preprocess (worker threads) and the forward passes (the backend's
intra-op threads) compete for the same cores. A model that takes a few ms per image leaves
the cores mostly to decoding and the event loop; a large one needs them all for inference.
The split gives each side cores in proportion to its measured per-image cost in core time
(inference wall time x the threads it ran on; decoding runs on one core per image). The
inference runners are then built for exactly that many threads: an OpenVINO or ONNX Runtime
pool of two threads that shares two cores with a decode worker stalls at every layer's barrier
whenever the decoder holds one of the cores.
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image

from ..core.images import prepare_image
from ..core.loading import Classifier
from ..core.spec import Preprocessing

INFER_RUNS = 3
DECODE_RUNS = 8


@dataclass(frozen=True)
class CpuSplit:
    """Inference threads and decode workers, and the measurements they came from."""

    threads: int
    workers: int
    infer_ms_per_image: float
    decode_ms_per_image: float
    cores: int

    def describe(self) -> str:
        return (f"{self.threads} inference thread(s), {self.workers} decode worker(s) on {self.cores} cores "
                f"(measured per image: inference {self.infer_ms_per_image:.2f} ms, "
                f"decode + preprocess {self.decode_ms_per_image:.2f} ms)")


def choose_split(infer_ms: float, decode_ms: float, cores: int, *, threads: int | None = None,
                 workers: int | None = None) -> CpuSplit:
    """Cores to inference in proportion to its share of the per-image cost in core-milliseconds (at
    least one each); ``threads`` / ``workers`` given by the user win."""
    share = infer_ms / (infer_ms + decode_ms) if infer_ms + decode_ms > 0 else 1.0
    auto_threads = min(cores, max(1, round(cores * share)))
    chosen_threads = threads or auto_threads
    chosen_workers = workers or max(1, cores - chosen_threads)
    return CpuSplit(chosen_threads, chosen_workers, round(infer_ms, 3), round(decode_ms, 3), cores)


def measure_infer_ms(classifier: Classifier, batch_size: int) -> float:
    """Core-milliseconds per image of a forward pass at ``batch_size`` (the model is already warm): the
    fastest of a few runs (other work on the machine only ever adds time) times the runner's threads."""
    batch = torch.zeros(batch_size, *classifier.meta.preprocessing.input_shape)
    return _fastest_ms(lambda: classifier.probabilities(batch), INFER_RUNS) / batch_size * runner_threads(classifier)


def runner_threads(classifier: Classifier) -> int:
    """The intra-op threads the classifier's runner was built with (the runtimes' default: every core)."""
    return getattr(classifier.runner, "threads", None) or available_cores()


def measure_decode_ms(preprocessing: Preprocessing) -> float:
    """Milliseconds per image to decode and preprocess a typical upload for this input size (fastest run)."""
    data = typical_upload(preprocessing)
    prepare_image(data, preprocessing)
    return _fastest_ms(lambda: prepare_image(data, preprocessing), DECODE_RUNS)


def _fastest_ms(call: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000.0)
    return min(times)


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
