"""Dynamic batching for one model, pipelined with image decoding.

Each image goes through two stages:

1. *prepare* (decode + preprocess) in a worker pool shared by all models, many at a time;
2. a batched forward pass on one of the model's instances (copies of its runner, each in its own
   inference thread, running batches at the same time; see :mod:`.cpu_split`). An image that is
   all there is to do (nothing else queued, being prepared or running) runs instead on the copy
   given every inference thread, if the model has one (``alone``): one thread per instance serves
   most images under load, but a lone image is faster on all of them (more images are shared
   among the instances, below).

A collector task on the event loop forms batches while the previous ones run. Batches are
dispatched as soon as an instance is free and one of these holds: the queue fills a batch
(``max_batch_size``), no more images for this model are being prepared and no instance is busy
(so an idle model starts at once), or the oldest image has waited ``max_wait_ms``. Each free instance
then takes the oldest images, at most an even share of the queue among all the model's instances
(busy ones included), as the largest of :func:`batch_sizes` that fits; the rest waits for the next
instance. On a CPU a larger batch hardly raises throughput, but each of its images waits for all of
it: sharing 8 queued images as 4 + 4 lowered resnet18's p99 latency at 16 clients (see
docs/serve.md). The share is never below a worthwhile forward pass (:data:`WORTHWHILE_FORWARD_S`), so a
light model keeps whole batches. With one instance (on a GPU) a batch takes the whole queue, up to
``max_batch_size``.
Images whose client went away are dropped before they reach the model; a bad image fails only its
own request.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..core.errors import ImageError, ResnetkitError
from ..core.images import stack_inputs
from ..run.loading import Classifier
from ..run.classify import Prediction, top_k
from .metrics import ServeMetrics

Prepare = Callable[[bytes], torch.Tensor]


# Batches are not split among instances below this forward time: per-batch costs (thread hand-offs, stacking, top-k,
# futures) then weigh. Without this floor, sharing every queue evenly served cifar_resnet20 at 0.88x the images at 32
# clients (6 interleaved rounds on a 2-core Zen 4); with it, cifar_resnet20 (0.4 ms an image on one thread) keeps
# batches of up to 32 as before, and resnet18 (16 ms an image) is shared image by image.
WORTHWHILE_FORWARD_S = 0.010


def batch_sizes(max_batch_size: int) -> list[int]:
    """The batch sizes formed: powers of two up to ``max_batch_size``, and ``max_batch_size`` itself.

    Backends that compile one program per input shape (OpenVINO) then compile a handful of
    programs, all at warm-up, instead of one per size met in traffic (a long pause each time).
    """
    sizes = {1 << n for n in range(max_batch_size.bit_length()) if 1 << n <= max_batch_size}
    return sorted(sizes | {max_batch_size})


class ServerBusyError(ResnetkitError):
    """The model's queue is full, or the server is shutting down: retry later (HTTP 503)."""


@dataclass
class _Item:
    tensor: torch.Tensor
    k: int
    future: asyncio.Future[list[Prediction]]
    enqueued: float


class DynamicBatcher:
    """Groups concurrent images for a model into batched forward passes on its ``instances`` (or ``alone``)."""

    def __init__(self, name: str, instances: Sequence[Classifier], prepare: Prepare, decode_pool: Executor,
                 metrics: ServeMetrics, *, max_batch_size: int, max_wait_ms: float, max_queue: int,
                 alone: Classifier | None = None) -> None:
        self.name = name
        self.instances = list(instances)
        self.alone = alone
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self._prepare = prepare
        self._decode_pool = decode_pool
        self._metrics = metrics
        self._inference = ThreadPoolExecutor(len(self.instances), thread_name_prefix=f"infer-{name}")
        self._idle = list(self.instances)  # instances not running a batch
        self._alone_running = False  # while ``alone`` runs on every thread, the instances wait
        self._running: set[asyncio.Task[None]] = set()
        self._seconds_per_image = 0.0  # an instance's least forward time per image; 0 before the first
        self._queue: deque[_Item] = deque()
        self._preparing = 0  # images in the worker pool
        self._outstanding = 0  # images admitted and not finished
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._collect(), name=f"batcher-{self.name}")

    async def close(self) -> None:
        """Refuse new images, finish every admitted one, then stop the inference threads."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        self._inference.shutdown(wait=True)

    async def classify(self, images: Sequence[bytes], k: int) -> list[list[Prediction] | ImageError]:
        """Top-``k`` predictions of each image, or the :class:`ImageError` that refused it."""
        self._admit(len(images))
        try:
            return list(await asyncio.gather(*(self._classify_one(data, k) for data in images)))
        finally:
            self._outstanding -= len(images)
            self._changed()

    def _admit(self, count: int) -> None:
        if self._closing:
            raise ServerBusyError("The server is shutting down; retry on another instance.")
        if self._outstanding + count > self.max_queue:
            self._metrics.images.labels(self.name, "rejected").inc(count)
            raise ServerBusyError(
                f"Model '{self.name}' has {self._outstanding} images in flight (limit {self.max_queue}); retry shortly."
            )
        self._outstanding += count

    async def _classify_one(self, data: bytes, k: int) -> list[Prediction] | ImageError:
        tensor = await self._prepare_in_pool(data)
        if isinstance(tensor, ImageError):
            self._metrics.images.labels(self.name, "invalid").inc()
            return tensor
        future: asyncio.Future[list[Prediction]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(tensor, k, future, time.monotonic()))
        self._changed()
        return await future

    async def _prepare_in_pool(self, data: bytes) -> torch.Tensor | ImageError:
        self._preparing += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._decode_pool, self._prepare_or_error, data)
        finally:
            self._preparing -= 1
            self._changed()

    def _prepare_or_error(self, data: bytes) -> torch.Tensor | ImageError:
        try:
            return self._prepare(data)
        except ImageError as exc:
            return exc

    def _changed(self) -> None:
        self._metrics.queue_depth.labels(self.name).set(self._preparing + len(self._queue))
        self._wakeup.set()

    async def _collect(self) -> None:
        while (batches := await self._next_batches()) is not None:
            for batch, runner in batches:
                task = asyncio.create_task(self._run(batch, runner))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
        await asyncio.gather(*self._running)

    async def _next_batches(self) -> list[tuple[list[_Item], Classifier]] | None:
        """Wait until batches should go (see the module docstring); ``None`` once closed and drained."""
        while True:
            self._drop_cancelled()
            timeout = None
            if self._queue and self._idle and not self._alone_running:
                waited = time.monotonic() - self._queue[0].enqueued
                # with an instance busy, a batch waits to fill (or for max_wait) even when nothing more is being
                # prepared: for a light model the busy instance is soon free, and two half batches cost more
                # than one (cifar_resnet20 served 0.8x as many images without this)
                settled = self._preparing == 0 and len(self._idle) == len(self.instances)
                if len(self._queue) >= self.max_batch_size or settled or waited >= self.max_wait:
                    return self._share()
                timeout = self.max_wait - waited
            elif self._closing and self._outstanding == 0:
                return None
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    def _share(self) -> list[tuple[list[_Item], Classifier]]:
        """A batch for each idle instance while a share of the queue is left: at most an even share among all the
        instances, or the images of one worthwhile forward pass (:data:`WORTHWHILE_FORWARD_S`) if more."""
        share = max(-(-len(self._queue) // len(self.instances)), self._worthwhile_batch())
        batches: list[tuple[list[_Item], Classifier]] = []
        while self._queue and self._idle and (not batches or len(self._queue) >= share):  # leftovers wait to fill
            batch = self._take(share)
            batches.append((batch, self._runner_for()))
        return batches

    def _worthwhile_batch(self) -> int:
        """The least batch size whose forward pass on an instance lasts :data:`WORTHWHILE_FORWARD_S` (1 before the
        first pass)."""
        if not self._seconds_per_image:
            return 1
        images = math.ceil(WORTHWHILE_FORWARD_S / self._seconds_per_image)
        return min((size for size in batch_sizes(self.max_batch_size) if size >= images), default=self.max_batch_size)

    def _runner_for(self) -> Classifier:
        """``alone`` for a batch just taken that leaves nothing else to do (no image queued or being prepared, no
        instance busy: with an even share per instance, a lone image), else an idle instance."""
        if (self.alone is not None and not self._queue and self._preparing == 0
                and len(self._idle) == len(self.instances)):
            self._alone_running = True
            return self.alone
        return self._idle.pop()

    def _drop_cancelled(self) -> None:
        live = [item for item in self._queue if not item.future.cancelled()]
        if len(live) != len(self._queue):
            self._metrics.images.labels(self.name, "cancelled").inc(len(self._queue) - len(live))
            self._queue = deque(live)
            self._changed()

    def _take(self, at_most: int) -> list[_Item]:
        """The oldest images: the largest batch size up to ``at_most`` that the queue fills."""
        size = max(s for s in batch_sizes(self.max_batch_size) if s <= min(at_most, len(self._queue)))
        batch = [self._queue.popleft() for _ in range(size)]
        self._changed()
        return batch

    async def _run(self, batch: list[_Item], instance: Classifier) -> None:
        self._metrics.batch_size.labels(self.name).observe(len(batch))
        now = time.monotonic()
        self._metrics.observe_queue_wait(self.name, sum(now - item.enqueued for item in batch))
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._inference, self._infer, instance, [i.tensor for i in batch],
                                                 [i.k for i in batch])
        except Exception as exc:  # a backend failure fails this batch, never the collector
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        finally:
            if instance is self.alone:
                self._alone_running = False
            else:
                self._idle.append(instance)
            self._changed()
        for item, predictions in zip(batch, results):
            if not item.future.done():
                item.future.set_result(predictions)
        self._metrics.images.labels(self.name, "ok").inc(len(batch))

    def _infer(self, instance: Classifier, tensors: list[torch.Tensor], ks: list[int]) -> list[list[Prediction]]:
        """One forward pass on ``instance`` (in an inference thread); each row keeps its own top-k."""
        start = time.perf_counter()
        probabilities = instance.probabilities(stack_inputs(tensors))
        rows = top_k(probabilities, instance.meta.categories, max(ks))
        seconds = time.perf_counter() - start
        self._metrics.inference.labels(self.name).observe(seconds)
        if instance is not self.alone:  # for _share: the least seen, as waits for the cores or the GIL only add
            per_image = seconds / len(tensors)
            self._seconds_per_image = min(self._seconds_per_image or per_image, per_image)
        return [row[:k] for row, k in zip(rows, ks)]
