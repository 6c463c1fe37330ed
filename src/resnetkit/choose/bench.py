"""Measure accuracy vs size vs speed of models on this machine.

Each (model, backend, precision) variant is measured in a fresh subprocess so that peak
memory is that variant's own and one model's allocator or thread-pool state cannot
colour the next. Costs do not depend on weight values, so zoo models are measured with
random weights (offline); accuracy is the published figure unless ``eval_dir`` is given.
"""

from __future__ import annotations

import io
import os
import platform
import statistics
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ..core.errors import ResnetkitError
from ..core.images import decode_image
from ..core.measure import Timing, count_macs, count_params, peak_rss_mb, reset_peak_rss, serialized_size_bytes, time_calls
from ..core.loading import Classifier, load_model
from ..backends.base import RunnerOptions
from ..core.spec import ModelMeta
from ..core.zoo import get_spec, is_zoo_name

DEFAULT_MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                  "mobilenet_v2", "shufflenet_v2_x1_0", "efficientnet_b0")


@dataclass(frozen=True)
class BenchConfig:
    """How to measure. ``quick`` trades stability for a fast rough pass."""

    batch_size: int = 16  # throughput batch
    threads: int | None = None  # None: torch's default (one per physical core)
    channels_last: bool = False
    end_to_end: bool = False
    warmup: int = 5
    min_runs: int = 30
    min_seconds: float = 2.0
    throughput_runs: int = 5
    eval_dir: str | None = None
    eval_limit: int | None = None
    isolate: bool = True  # a fresh subprocess for every measurement
    # Batch-1 latency differs between processes by up to ~40 % on the development VM (same model,
    # same settings), so each variant is measured in this many processes, in interleaved rounds.
    processes: int = 3

    @classmethod
    def quick(cls, **overrides: Any) -> "BenchConfig":
        base = cls(batch_size=8, warmup=2, min_runs=10, min_seconds=1.0, throughput_runs=2, processes=1)
        return replace(base, **overrides)


@dataclass
class BenchRecord:
    """One measured variant. Sizes in MB (10^6 bytes), times in ms, memory in MB.

    ``peak_mem_mb`` is the peak RSS of the measuring process from just before the model is
    built to the last timed run (Python, torch and the model together); ``baseline_mem_mb``
    is what the process held before the model was built, so the model's own share is the
    difference.
    """

    model: str
    backend: str
    precision: str
    params_m: float | None
    gmacs: float | None
    size_mb_fp32: float | None
    size_mb_fp16: float | None
    latency_ms_p50: float
    latency_ms_p90: float
    latency_runs: int
    throughput_ips: float
    batch_size: int
    throughput_runs: int
    peak_mem_mb: float
    top1: float | None
    top5: float | None
    accuracy_source: str
    accuracy_dataset: str
    published_gmacs: float | None
    input_size: int
    threads: int
    device: str
    memory_format: str
    torch_version: str
    cpu: str
    e2e_latency_ms_p50: float | None = None
    preprocess_ms_p50: float | None = None
    eval_images: int | None = None
    baseline_mem_mb: float | None = None
    processes: int = 1  # fresh processes the variant was measured in; latency and throughput are their medians
    latency_ms_p50_per_process: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        suffix = "" if (self.backend, self.precision) == ("eager", "fp32") else f" [{self.backend}/{self.precision}]"
        return self.model + suffix

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Variant:
    """What to measure; ``None`` leaves the choice to the model (its own runtime, its stored precision)."""

    model: str
    backend: str | None = None
    precision: str | None = None

    def describe(self) -> str:
        return f"{self.model} [{self.backend or 'default backend'}/{self.precision or 'default precision'}]"


def check_model_refs(models: Sequence[str]) -> None:
    """Fail fast, before any subprocess starts, on a reference that is neither zoo name nor file."""
    for ref in models:
        if not is_zoo_name(ref) and not Path(ref).exists():
            get_spec(ref)  # raises UnknownModelError with suggestions


def bench(
    models: Sequence[str] = DEFAULT_MODELS,
    config: BenchConfig = BenchConfig(),
    *,
    backends: Sequence[str | None] = (None,),
    precisions: Sequence[str | None] = (None,),
    on_record: Callable[[BenchRecord | ResnetkitError, Variant], None] | None = None,
) -> list[BenchRecord]:
    """Measure every model x backend x precision in ``config.processes`` rounds (every variant
    once per round, so a slow spell of the machine hits all of them) and combine each variant's
    measurements. ``on_record`` sees every single measurement; variants a backend cannot run are
    reported there as errors and left out of the result."""
    check_model_refs(models)
    variants = [Variant(m, b, p) for m in models for b in backends for p in precisions]
    measured: dict[Variant, list[BenchRecord]] = {v: [] for v in variants}
    for round_index in range(config.processes):
        # Accuracy (--eval) does not change between processes: it is measured in the first round only.
        round_config = config if round_index == 0 else replace(config, eval_dir=None)
        for variant in variants:
            if round_index and not measured[variant]:
                continue  # it failed in the first round
            try:
                record = _run_isolated(variant, round_config) if config.isolate else bench_variant(variant, round_config)
            except ResnetkitError as exc:
                if on_record:
                    on_record(exc, variant)
                if len(variants) == 1:
                    raise
                continue
            measured[variant].append(record)
            if on_record:
                on_record(record, variant)
    return [combine(runs) for runs in measured.values() if runs]


def combine(runs: Sequence[BenchRecord]) -> BenchRecord:
    """One record for measurements of the same variant in several processes: medians of the
    timings, the highest peak memory, the first run's counts and accuracy."""
    def median(key: str) -> Any:
        values = [getattr(r, key) for r in runs if getattr(r, key) is not None]
        return statistics.median(values) if values else None

    return replace(
        runs[0],
        latency_ms_p50=median("latency_ms_p50"), latency_ms_p90=median("latency_ms_p90"),
        latency_runs=sum(r.latency_runs for r in runs), throughput_ips=median("throughput_ips"),
        throughput_runs=sum(r.throughput_runs for r in runs), peak_mem_mb=max(r.peak_mem_mb for r in runs),
        baseline_mem_mb=median("baseline_mem_mb"), e2e_latency_ms_p50=median("e2e_latency_ms_p50"),
        preprocess_ms_p50=median("preprocess_ms_p50"), processes=len(runs),
        latency_ms_p50_per_process=[r.latency_ms_p50 for r in runs],
    )


def _run_isolated(variant: Variant, config: BenchConfig) -> BenchRecord:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(bench_variant, variant, config).result()


def bench_variant(variant: Variant, config: BenchConfig) -> BenchRecord:
    """Measure one variant in this process."""
    if config.threads:
        torch.set_num_threads(config.threads)
    baseline_mb = reset_peak_rss()
    options = RunnerOptions(batch_size=config.batch_size, precision=variant.precision)
    with_weights = config.eval_dir is not None
    classifier = load_model(variant.model, pretrained=with_weights, backend=variant.backend, options=options)
    module = classifier.module
    if module is not None and config.channels_last:
        module.to(memory_format=torch.channels_last)
    shape = classifier.meta.preprocessing.input_shape
    single = torch.randn(1, *shape)
    batch = torch.randn(config.batch_size, *shape)
    latency = time_calls(lambda: classifier.logits(single), warmup=config.warmup,
                         min_runs=config.min_runs, min_seconds=config.min_seconds)
    throughput = time_calls(lambda: classifier.logits(batch), warmup=1, min_runs=config.throughput_runs,
                            min_seconds=config.min_seconds, max_runs=max(config.throughput_runs, 50))
    peak_mb = peak_rss_mb()  # before _record: serializing the state dict to measure its size allocates too
    record = _record(variant, config, classifier, latency, throughput, peak_mb)
    record.latency_ms_p50_per_process = [latency.p50_ms]
    record.baseline_mem_mb = baseline_mb
    if baseline_mb is None:
        record.notes.append("peak memory includes the imports before the model was built (peak RSS cannot be reset here)")
    if config.end_to_end:
        record.preprocess_ms_p50, record.e2e_latency_ms_p50 = _end_to_end(classifier, config)
    if config.eval_dir:
        _add_accuracy(record, classifier, config)
    return record


def _record(variant: Variant, config: BenchConfig, classifier: Classifier, latency: Timing,
            throughput: Timing, peak_mb: float) -> BenchRecord:
    meta, module = classifier.meta, classifier.module
    shape = meta.preprocessing.input_shape
    return BenchRecord(
        model=variant.model,  # as the user named it: a zoo name or the artifact's path
        backend=classifier.runner.backend,
        precision=classifier.runner.precision,
        params_m=count_params(module) / 1e6 if module is not None else None,
        gmacs=count_macs(module.float(), shape) / 1e9 if module is not None else None,
        size_mb_fp32=serialized_size_bytes(module, torch.float32) / 1e6 if module is not None else None,
        size_mb_fp16=serialized_size_bytes(module, torch.float16) / 1e6 if module is not None else None,
        latency_ms_p50=latency.p50_ms,
        latency_ms_p90=latency.p90_ms,
        latency_runs=latency.runs,
        throughput_ips=config.batch_size / (throughput.p50_ms / 1000.0),
        batch_size=config.batch_size,
        throughput_runs=throughput.runs,
        peak_mem_mb=peak_mb,
        **_published_accuracy(meta, classifier.runner.precision),
        published_gmacs=meta.metrics.gmacs,
        input_size=shape[-1],
        threads=torch.get_num_threads(),
        device="cpu",
        memory_format="channels_last" if config.channels_last else "contiguous (NCHW)",
        torch_version=torch.__version__,
        cpu=_cpu_name(),
    )


def _published_accuracy(meta: ModelMeta, precision: str) -> dict[str, Any]:
    """The weights' published top-1/top-5 where they describe this variant: unmodified weights run in fp32."""
    metrics = meta.metrics
    if metrics.top1 is None:
        source = "none published for these weights (measure with --eval DIR)"
    elif precision != "fp32":
        source = (f"not measured: the published {metrics.top1:.2f} % is for fp32 and this variant ran {precision} "
                  "(measure with --eval DIR)")
    else:
        return {"top1": metrics.top1, "top5": metrics.top5, "accuracy_source": f"published: {metrics.source}",
                "accuracy_dataset": metrics.dataset}
    return {"top1": None, "top5": None, "accuracy_source": source, "accuracy_dataset": metrics.dataset}


def synthetic_photo_jpeg(width: int = 640, height: int = 480, seed: int = 0) -> bytes:
    """A photo-sized JPEG (smooth gradients plus noise) for timing the decode path."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 200
    pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _end_to_end(classifier: Classifier, config: BenchConfig) -> tuple[float, float]:
    """p50 of (JPEG decode + preprocessing) and of (decode + preprocessing + forward) at batch 1."""
    data = synthetic_photo_jpeg()
    transform = classifier.transform
    prepare = lambda: transform(decode_image(data)).unsqueeze(0)  # noqa: E731
    pre = time_calls(prepare, warmup=config.warmup, min_runs=config.min_runs, min_seconds=config.min_seconds)
    full = time_calls(lambda: classifier.logits(prepare()), warmup=config.warmup,
                      min_runs=config.min_runs, min_seconds=config.min_seconds)
    return pre.p50_ms, full.p50_ms


def _add_accuracy(record: BenchRecord, classifier: Classifier, config: BenchConfig) -> None:
    from ..run.evaluate import evaluate

    report = evaluate(classifier, config.eval_dir, limit=config.eval_limit, progress=False)
    record.top1, record.top5, record.eval_images = report.top1, report.top5, report.n_images
    record.accuracy_source = f"measured on {config.eval_dir} ({report.n_images} images)"
    record.accuracy_dataset = str(config.eval_dir)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """Where the numbers were measured."""
    return {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch_version": torch.__version__, "python": platform.python_version(), "platform": platform.platform()}
