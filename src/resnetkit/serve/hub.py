"""The served models: loaded and warmed in the background, each behind its own batcher."""

from __future__ import annotations

import asyncio
import gc
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

import torch

from ..core.device import resolve_device, usable_cores
from ..core.errors import ResnetkitError
from ..core.images import prepare_image
from ..run.loading import Classifier, load_model
from ..backends.base import RunnerOptions
from .batcher import DynamicBatcher, batch_sizes
from .cpu_split import CpuSplit, candidate_layouts, fastest_split, fixed_split, gpu_split, layout_for, pipeline_rate
from .metrics import ServeMetrics
from .schemas import ModelDetail, ModelInfo
from .settings import ModelEntry, ServeSettings

log = logging.getLogger("uvicorn.error")


class ServeError(ResnetkitError):
    """An error answered to the client with ``status`` and a one-paragraph message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class LoadedModel:
    """A configured model as built for a split: its instances, and the copy on every thread for lone batches."""

    name: str
    ref: str
    instances: list[Classifier]
    alone: Classifier | None = None


@dataclass
class ServedModel:
    name: str
    ref: str  # as given when the server started: zoo name or file
    classifier: Classifier  # the first instance: what every instance runs, for the routes to describe
    batcher: DynamicBatcher
    started: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    @property
    def in_process(self) -> bool:
        """Whether the model runs in this process (not in Ray Serve replicas, whose memory is theirs)."""
        return isinstance(self.classifier, Classifier)

    @property
    def runtime(self) -> str:
        """What runs the model and where, e.g. ``openvino/bf16 on CPU (auto)``."""
        return self.classifier.ran.label()

    def info(self) -> ModelInfo:
        meta, ran = self.classifier.meta, self.classifier.ran
        return ModelInfo(
            name=self.name, arch=meta.arch, weights=meta.weights, backend=ran.backend, precision=ran.precision,
            device=str(ran.device), device_name=ran.device.name, chosen_by_auto=ran.chosen_by_auto, runtime=ran.label(),
            num_classes=meta.num_classes, input_size=meta.preprocessing.crop_size,
            preprocessing=meta.preprocessing.describe(), published_top1=meta.metrics.top1,
            published_source=meta.metrics.source,
            dataset=meta.metrics.dataset, max_batch_size=self.batcher.max_batch_size,
        )

    def detail(self) -> ModelDetail:
        return ModelDetail(**self.info().model_dump(), categories=list(self.classifier.meta.categories))


class ModelHub:
    """Loads the configured models off the event loop, then serves them until closed."""

    def __init__(self, settings: ServeSettings, metrics: ServeMetrics,
                 on_load_error: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.models: dict[str, ServedModel] = {}
        self.ready = False
        self.load_error: str | None = None
        self._on_load_error = on_load_error
        self.split: CpuSplit | None = None
        self._decode_pool: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        """Load and warm every model, then start their batchers; a failure is reported, not raised."""
        try:
            loaded, self.split = await asyncio.to_thread(self._load_for_split)
            _check_unique([model.name for model in loaded])
        except Exception as exc:  # noqa: BLE001 - any load failure stops the server with its message
            self._fail(str(exc) if isinstance(exc, ResnetkitError) else f"{type(exc).__name__}: {exc}")
            return
        self._decode_pool = ThreadPoolExecutor(self.split.workers, thread_name_prefix="decode")
        log.info("cpu split: %s", self.split.describe())
        self.metrics.cpu_split.labels("inference_threads").set(self.split.threads or 0)
        self.metrics.cpu_split.labels("decode_workers").set(self.split.workers)
        self.metrics.cpu_split.labels("instances_per_model").set(self.split.instances)
        devices = {model.instances[0].ran.device for model in loaded}
        self.metrics.watch_gpus(sorted((d for d in devices if d.is_cuda), key=str))
        for model in loaded:
            self.models[model.name] = ServedModel(model.name, model.ref, model.instances[0], self._batcher(model))
            self.models[model.name].batcher.start()
        self.ready = True
        log.info("ready: %s", ", ".join(f"{m.name} ({m.runtime})" for m in self.models.values()))

    def _fail(self, message: str) -> None:
        self.load_error = f"Could not load the models: {message}"
        if self._on_load_error:  # its owner reports it (the CLI: one error: line)
            self._on_load_error(self.load_error)
        else:
            log.error(self.load_error)

    async def close(self) -> None:
        """Finish the admitted images of every model, then stop the workers."""
        self.ready = False
        await asyncio.gather(*(m.batcher.close() for m in self.models.values()))
        if self._decode_pool is not None:
            self._decode_pool.shutdown(wait=True)

    def get(self, name: str) -> ServedModel:
        model = self.models.get(name)
        if model is not None:
            return model
        if not self.ready:
            raise ServeError(503, self.load_error or "The models are still loading; retry in a few seconds.")
        served = ", ".join(self.models)
        raise ServeError(404, f"Model '{name}' is not served here. Served models: {served}. "
                              "Models are chosen when the server starts, never by clients.")

    def _load_for_split(self) -> tuple[list[LoadedModel], CpuSplit]:
        """The models built for the split of the cores, and the split (worker thread; see :mod:`.cpu_split`):
        on a GPU every core decodes; on the CPU the layout of --threads/--instances if given, else the one whose
        decode + inference pipeline measured fastest. The models of each thread count are freed before the next
        count's are built, and the chosen ones built again alone (runtimes keep threads and cores per model for as
        long as it lives)."""
        device = resolve_device(self.settings.device)
        cores, workers = usable_cores(), self.settings.workers
        if device.is_cuda:
            return self._load_all(None, 1), gpu_split(device.name, cores, workers)
        if self.settings.threads or self.settings.instances:
            split = fixed_split(*layout_for(cores, self.settings.threads, self.settings.instances), cores, workers)
            return self._load_split(split), split
        layouts, rates = candidate_layouts(cores), {}
        for threads in sorted({threads for _, threads in layouts}):
            counts = [instances for instances, t in layouts if t == threads]
            trial = self._load_all(threads, max(counts))  # the fewer-instance layouts run the first copies
            for count in counts:
                rates[count, threads] = pipeline_rate([model.instances[:count] for model in trial],
                                                      fixed_split(count, threads, cores, workers).workers)
            del trial
            gc.collect()  # the next models are built with no trial model left beside them
        split = fastest_split(rates, cores, workers)
        return self._load_split(split), split  # built alone, as auto builds its winner

    def _load_split(self, split: CpuSplit) -> list[LoadedModel]:
        """Every model as ``split`` runs it: its instances, and with several, a copy on all their threads. That copy
        runs the instances' backend and precision (auto could pick another for more threads), so an answer does
        not depend on which of them ran it, and the model's description holds for both."""
        loaded = self._load_all(split.threads, split.instances)
        if split.alone_threads:
            for model, entry in zip(loaded, self.settings.entries):
                ran = model.instances[0].ran
                same = self.settings.model_copy(update={"backend": ran.backend, "precision": ran.precision})
                model.alone = load_served(entry, same, split.alone_threads)
        return loaded

    def _load_all(self, threads: int | None, instances: int) -> list[LoadedModel]:
        """``instances`` copies of every configured model, each loaded and warmed by :func:`load_served` for
        ``threads`` intra-op threads."""
        loaded = []
        for entry in self.settings.entries:
            copies = [load_served(entry, self.settings, threads) for _ in range(instances)]
            loaded.append(LoadedModel(entry.served_name(copies[0].meta), entry.ref, copies))
        return loaded

    def _batcher(self, model: LoadedModel) -> DynamicBatcher:
        preprocessing, max_pixels = model.instances[0].meta.preprocessing, self.settings.max_pixels

        def prepare(data: bytes) -> torch.Tensor:
            return prepare_image(data, preprocessing, max_pixels=max_pixels, allow_multi_frame=False)

        s = self.settings
        assert self._decode_pool is not None and self.split is not None
        return DynamicBatcher(model.name, model.instances, prepare, self._decode_pool, self.metrics,
                              max_batch_size=s.max_batch_size, max_wait_ms=s.max_wait_ms, max_queue=s.max_queue,
                              alone=model.alone)


def load_served(entry: ModelEntry, settings: ServeSettings, threads: int | None) -> Classifier:
    """``entry`` as the server runs it: on ``settings.device`` (threads apply on the CPU only), run once at every
    batch size the batcher forms, so backends that compile per shape (OpenVINO, CUDA graphs) compile now, not on
    a client's request. The local hub and Ray Serve's replicas both load through here."""
    device = resolve_device(settings.device)
    options = RunnerOptions(batch_size=settings.max_batch_size, precision=settings.precision,
                            threads=None if device.is_cuda else threads, device=device)
    classifier = load_model(entry.ref, pretrained=not settings.random_weights, backend=settings.backend,
                            options=options)
    shape = classifier.meta.preprocessing.input_shape
    for size in batch_sizes(settings.max_batch_size):
        classifier.probabilities(torch.zeros(size, *shape))
    return classifier


def _check_unique(names: list[str]) -> None:
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        name = duplicates[0]
        raise ResnetkitError(f"two models would be served as '{name}'. Name them with NAME=REF, "
                             f"e.g. '{name}-a=path/a.pt,{name}-b=path/b.pt'.")
