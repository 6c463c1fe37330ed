"""The variants of one model, built in one measuring process and timed when the parent asks.

Every variant, the eager fp32 reference included, is built with the run's device and thread count in its
:class:`RunnerOptions`; what its runner then reports (``RunInfo``) goes into its record. Timing inputs are made
on the runner's own device, and every timed call is synchronised with it (:func:`~resnetkit.core.measure.timed_calls`).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Sequence

import torch

from ..backends.base import RunInfo, RunnerOptions, artifact_size
from ..backends.base import TrialGate as TrialGateHook
from ..backends.base import TrialProcess
from ..core.device import Device, cpu_name, resolve_device
from ..core.errors import ResnetkitError
from ..core.measure import (SETTLE_SECONDS, count_macs, count_params, peak_rss_mb, reset_peak_rss, serialized_size_bytes,
                             time_calls, timed_calls)
from ..core.samples import synthetic_jpeg
from ..run.loading import Classifier, load_model
from .accuracy import add_measured_accuracy, published_accuracy, published_metrics
from .gpu import best_batch, gpu_peak_mb, reset_gpu_peak
from .records import REFERENCE, BenchConfig, BenchRecord, Variant

TUNED_BATCH_SIZE = 1  # auto picks each model's runtime for the headline figure, batch-1 latency
SEARCH_SECONDS = 0.25  # timed seconds per batch size in the best-batch search (after one untimed call)

Entry = tuple[Variant, "BenchRecord | ResnetkitError", bool]  # (variant, record or error, is the reference)


class ModelWorker:
    """The variants of one model, built in this process and timed on request."""

    def __init__(self, model: str, variants: Sequence[Variant], config: BenchConfig,
                 trial_gate: TrialGateHook | None = None, trial_process: TrialProcess | None = None) -> None:
        self.config = config
        self.device = resolve_device(config.device)  # here, in the measuring process, not before it starts
        self.trial_gate, self.trial_process = trial_gate, trial_process
        self.built: list[tuple[Classifier, RunInfo] | None] = []
        # per model: its module's parameters, GMACs and sizes, counted once (resnet152's took 1-2 s on a Zen 3)
        self.module_facts: dict[tuple[str, bool], dict[str, float | None]] = {}
        self.entries: list[Entry] = []
        baseline_mb = reset_peak_rss()
        for variant in variants:
            self._build(variant, baseline_mb, self.device)
        ran = [built[1] for built in self.built if built is not None]
        if config.reference and ran and not any(isinstance(r, BenchRecord) and r.is_reference for _, r, _ in self.entries):
            # where the variants ran: the run's device, or the CPU where --device auto could not put a backend on the GPU
            self._build(Variant(model, *REFERENCE), baseline_mb, ran[0].device, reference=True)

    def _build(self, variant: Variant, baseline_mb: float | None, device: Device, reference: bool = False) -> None:
        config = self.config
        started = time.monotonic()
        options = RunnerOptions(batch_size=TUNED_BATCH_SIZE, precision=variant.precision, threads=config.threads,
                                device=device, trial_gate=self.trial_gate, trial_process=self.trial_process)
        try:
            classifier = load_model(variant.model, pretrained=config.eval_dir is not None and not reference,
                                    backend=variant.backend, options=options)
            if classifier.module is not None and config.channels_last:
                classifier.module.to(memory_format=torch.channels_last)
            ran = classifier.ran  # builds the runner (auto: measures its candidates)
        except ResnetkitError as exc:
            self.built.append(None)
            self.entries.append((variant, exc, reference))
            return
        self.built.append((classifier, ran))
        index = len(self.built) - 1
        reset_gpu_peak(ran.device)
        self.time(index, "latency", config.warmup)
        self.time(index, "throughput", 0 if reference else 1)
        peak_mb = peak_rss_mb()
        key = (variant.model, classifier.module is not None)  # a model's variants and reference: the same module
        if key not in self.module_facts:
            self.module_facts[key] = _module_facts(classifier)
        record = _record(variant, config, classifier, ran, peak_mb, self.module_facts[key])
        record.gpu_peak_mb = gpu_peak_mb(ran.device)
        record.baseline_mem_mb = baseline_mb
        record.build_seconds = time.monotonic() - started
        if baseline_mb is None:
            record.notes.append("peak memory includes the imports before the model was built (peak RSS cannot be reset here)")
        if len(self.entries) and not reference:
            record.notes.append("peak memory includes the variants built before this one in the same process")
        if config.eval_dir and not reference:
            add_measured_accuracy(record, classifier, config)
        self.entries.append((variant, record, reference))

    def _variant(self, index: int) -> tuple[Classifier, RunInfo]:
        built = self.built[index]
        assert built is not None, "a variant that failed to build is never timed"
        return built

    def _timed(self, index: int, batch: int, calls: int, min_seconds: float = 0.0, settle: float = 0.0) -> list[float]:
        """ms of ``calls`` forward passes of variant ``index`` (and at least ``min_seconds``) on a random batch
        of ``batch`` images made on the runner's device, each synchronised with it, after ``settle`` seconds."""
        classifier, ran = self._variant(index)
        inputs = torch.randn(batch, *classifier.meta.preprocessing.input_shape, device=ran.device.torch)
        # the runner itself: what the model costs, without Classifier.logits' check of the outputs
        return timed_calls(lambda: classifier.runner(inputs), calls=calls, min_seconds=min_seconds,
                           sync=ran.device.synchronize, settle=settle)

    def time(self, index: int, kind: str, calls: int) -> list[float]:
        """``calls`` timed forward passes of variant ``index`` at batch 1 (``latency``, a burst of the parent's
        interleaved rounds: after :data:`SETTLE_SECONDS`, as another variant ran just before) or at the throughput
        batch size (``throughput``, right after that variant's burst), in ms."""
        if kind == "latency":
            return self._timed(index, 1, calls, settle=SETTLE_SECONDS)
        return self._timed(index, self.config.batch_size, calls)

    def best_batch(self, index: int) -> tuple[int, float] | None:
        """On a GPU: the batch size with the most images per second and that rate (:func:`.gpu.best_batch`,
        from the throughput batch up); None on the CPU."""
        if not self._variant(index)[1].device.is_cuda:
            return None

        def images_per_second(size: int) -> float:
            self._timed(index, size, 1)  # untimed: cuDNN picks its kernels, a CUDA graph is captured
            return size / (statistics.median(self._timed(index, size, 3, SEARCH_SECONDS)) / 1000.0)

        return best_batch(images_per_second, self.config.batch_size)

    def end_to_end(self, index: int) -> tuple[float, float]:
        """p50 of (JPEG decode + preprocessing) and of (decode + preprocessing + forward) at batch 1,
        timed after the rounds (at least ``min_runs`` calls and 1 s each)."""
        classifier, ran = self._variant(index)
        config = self.config
        data = synthetic_jpeg()
        prepare = lambda: classifier.prepare(data).unsqueeze(0)  # noqa: E731
        seconds = min(1.0, config.max_seconds)
        pre = time_calls(prepare, warmup=config.warmup, min_runs=config.min_runs, min_seconds=seconds)
        full = time_calls(lambda: classifier.runner(prepare()), warmup=config.warmup, min_runs=config.min_runs,
                          min_seconds=seconds, sync=ran.device.synchronize)
        return pre.p50_ms, full.p50_ms

    def close(self) -> None:
        self.built.clear()


def _module_facts(classifier: Classifier) -> dict[str, float | None]:
    """Parameters (millions), GMACs and the fp32/fp16 state dicts' sizes (MB) of the classifier's PyTorch module
    (None each for a model file without one)."""
    module = classifier.module
    if module is None:
        return dict.fromkeys(("params_m", "gmacs", "size_mb_fp32", "size_mb_fp16"))
    return {"params_m": count_params(module) / 1e6,
            "gmacs": count_macs(module, classifier.meta.preprocessing.input_shape) / 1e9,
            "size_mb_fp32": serialized_size_bytes(module, torch.float32) / 1e6,
            "size_mb_fp16": serialized_size_bytes(module, torch.float16) / 1e6}


def _record(variant: Variant, config: BenchConfig, classifier: Classifier, ran: RunInfo, peak_mb: float,
            module_facts: dict[str, float | None]) -> BenchRecord:
    """The static facts of a built variant; timings are filled in by the parent from its rounds."""
    meta = classifier.meta
    shape = meta.preprocessing.input_shape
    return BenchRecord(
        model=variant.model,  # as the user named it: a zoo name or the artifact's path
        backend=ran.backend,
        precision=ran.precision,
        **module_facts,
        latency_ms_p50=float("nan"),
        latency_ms_p90=float("nan"),
        latency_runs=0,
        throughput_ips=None,
        batch_size=config.batch_size,
        throughput_runs=0,
        peak_mem_mb=peak_mb,
        **published_accuracy(meta, ran.precision, default_precision=variant.precision is None),
        published_gmacs=published_metrics(meta)[0].gmacs,
        input_size=shape[-1],
        # runners that do not say run on torch's threads; threads do not apply on a GPU
        threads=None if ran.device.is_cuda else ran.threads or torch.get_num_threads(),
        device=str(ran.device),
        device_name=ran.device.name,
        chosen_by_auto=ran.chosen_by_auto,
        ran=ran.label(),
        file_mb=artifact_size(Path(variant.model)) / 1e6 if Path(variant.model).is_file() else None,
        memory_format="channels_last" if config.channels_last else "contiguous (NCHW)",
        torch_version=torch.__version__,
        cpu=cpu_name(),
    )
