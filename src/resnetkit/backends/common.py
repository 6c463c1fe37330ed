"""Helpers shared by the backends: the PyTorch runners' common part (device, precision, layout, threads, out of
memory), artifact metadata, calibration input, quiet third-party tools."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import sys
import threading
import warnings
from collections import OrderedDict
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
from torch import nn

from ..core.device import CPU, Device, cpu_flags
from ..core.errors import ResnetkitError
from ..core.samples import generated_batches
from ..core.spec import RANDOM_WEIGHTS, ModelMeta
from .base import FLOAT_DTYPES, RunnerOptions
from .tuning import cache_path

log = logging.getLogger("resnetkit")

META_KEY = "resnetkit"  # key under which artifacts store ModelMeta.to_dict() as JSON
GENERATED_CALIBRATION_IMAGES = 32
RECENT_CONVERSIONS = 2  # converted graphs kept in memory per process
CONVERTED_KEPT = 8  # converted models kept on disk per kind, for real and for random weights each; least recently used go first

Converted = TypeVar("Converted")
_recent: OrderedDict[tuple[str, str], Any] = OrderedDict()
_recent_lock = threading.Lock()
_digests: ContextVar[dict[int, tuple[nn.Module, bytes]] | None] = ContextVar("resnetkit_weight_digests", default=None)


def meta_to_json(meta: ModelMeta) -> str:
    return json.dumps(meta.to_dict(), sort_keys=True)


def meta_from_json(text: str, path: Path) -> ModelMeta:
    from ..core.errors import UnknownModelError

    try:
        return ModelMeta.from_dict(json.loads(text))
    except (ValueError, KeyError, TypeError) as exc:
        raise UnknownModelError(f"{path}: the resnetkit metadata is unreadable ({exc}).") from None


def content_key(module: nn.Module, meta: ModelMeta, *versions: str) -> str:
    """A digest of the module's weight values and the metadata (and of ``versions``, e.g. of the converter)."""
    digest = hashlib.sha256(";".join([*versions, meta_to_json(meta)]).encode())
    digest.update(_weights_digest(module))
    return digest.hexdigest()[:24]


def _weights_digest(module: nn.Module) -> bytes:
    """sha256 of the module's state dict, names and values; inside :func:`weights_unchanged`, once per module."""
    memo = _digests.get()
    if memo is not None and id(module) in memo:
        return memo[id(module)][1]
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    if memo is not None:
        memo[id(module)] = (module, digest.digest())  # the module is held, so its id is not reused meanwhile
    return digest.digest()


@contextlib.contextmanager
def weights_unchanged() -> Iterator[None]:
    """Inside, :func:`content_key` hashes each module's weights once, for callers that build several runners from
    modules nothing changes meanwhile (auto's candidates: five digests of resnet152's weights took 0.7 s)."""
    token = _digests.set({})
    try:
        yield
    finally:
        _digests.reset(token)


def convert_once(kind: str, key: str, convert: Callable[[], Converted], copy: Callable[[Converted], Converted],
                 usable: Callable[[Converted], bool] = lambda converted: True) -> Converted:
    """``convert()``, or a ``copy`` of its result for the same ``key`` (:func:`content_key`) converted a moment
    ago in this process if it is still ``usable`` (e.g. its file is still there): ``auto`` builds one runner per
    thread count from the same module, and the conversion (torch.export + the backend's converter) is most of a
    runner's build time."""
    with _recent_lock:
        if (kind, key) in _recent and usable(_recent[(kind, key)]):
            _recent.move_to_end((kind, key))
            return copy(_recent[(kind, key)])
    converted = convert()
    with _recent_lock:
        _recent[(kind, key)] = converted
        while len(_recent) > RECENT_CONVERSIONS:
            _recent.popitem(last=False)
    return copy(converted)


def converted_on_disk(kind: str, key: str, meta: ModelMeta, convert: Callable[[], Converted],
                      save: Callable[[Converted, Path], object], load: Callable[[Path], Converted],
                      suffixes: Sequence[str], saved: Callable[[Path], Converted] | None = None) -> Converted:
    """``convert()``, through an on-disk cache of converted models next to the tuning cache (``<kind>-models/``):
    torch.export and a converter take 5-20 s per model on a 2-core CPU, reading the result back about a second.
    ``key`` is :func:`content_key` of the weight values, the metadata and the converters' versions. Random weights
    (drawn from a fixed seed, so the same on every load) have a folder of their own: bench times the eight default
    models with them, and they never push the user's real models out. One entry is a file per suffix in
    ``suffixes``; ``save`` writes them all, atomically, given the path with the first one. Once saved, the result is
    ``saved(path)`` if given (e.g. a form that reads the file, not the object in memory), else the converted object."""
    folder = cache_path().parent / f"{kind}-models"
    if meta.weights == RANDOM_WEIGHTS:
        folder = folder / "random-weights"
    path = folder / f"{key}{suffixes[0]}"
    if all(path.with_suffix(suffix).is_file() for suffix in suffixes):
        os.utime(path)  # recently used
        return load(path)
    converted = convert()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        save(converted, path)
        _evict_least_recent(folder, suffixes)
    except OSError as exc:  # a read-only or full cache directory costs speed, not the result
        log.warning("could not cache the converted model in %s: %s", folder, exc)
        return converted
    return saved(path) if saved else converted


def _evict_least_recent(folder: Path, suffixes: Sequence[str]) -> None:
    """Keep the ``CONVERTED_KEPT`` most recently used entries; another process may be evicting at the same time."""
    used: dict[Path, float] = {}
    for path in folder.glob(f"*{suffixes[0]}"):
        try:
            used[path] = path.stat().st_mtime
        except FileNotFoundError:  # evicted by another process since the listing
            continue
    for path in sorted(used, key=used.__getitem__, reverse=True)[CONVERTED_KEPT:]:
        for suffix in suffixes:
            path.with_suffix(suffix).unlink(missing_ok=True)


def calibration_batches(meta: ModelMeta, options: RunnerOptions) -> Sequence[torch.Tensor]:
    """The caller's calibration batches, or generated images (good for timing, not accuracy)."""
    if options.calibration:
        return options.calibration
    warnings.warn(
        f"int8 without calibration data: calibrating {meta.name} on {GENERATED_CALIBRATION_IMAGES} generated images. "
        "Speed is representative, accuracy is not; use 'resnetkit quantize --calib DIR' for a usable model.",
        stacklevel=3,
    )
    return generated_batches(meta, count=GENERATED_CALIBRATION_IMAGES, batch_size=8)


def cpu_has_vnni() -> bool:
    """True if the CPU has int8 dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX)."""
    return not cpu_flags().isdisjoint({"avx512_vnni", "avx_vnni", "amx_int8"})


class TorchRunner:
    """What the PyTorch runners share: the module on its device in its precision (and channels-last layout, the
    default on a GPU, where cuDNN's fp16/bf16 kernels want it), inputs moved there (from pinned memory without
    blocking), logits back on the input's device, intra-op threads on the CPU set per call, and on a GPU a batch
    that does not fit in memory run in halves, said once. Subclasses override :meth:`forward`."""

    backend = "torch"

    def __init__(self, module: nn.Module, precision: str = "fp32", *, device: Device = CPU,
                 threads: int | None = None, channels_last: bool | None = None) -> None:
        self.precision, self.device = precision, device
        self.threads = None if device.is_cuda else threads  # threads apply on the CPU only
        self.dtype = FLOAT_DTYPES[precision]
        self.channels_last = device.is_cuda if channels_last is None else channels_last
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.module = module.to(device=device.torch, dtype=self.dtype, memory_format=self.memory_format).eval()
        self.fits: int | None = None  # the largest batch known to fit in GPU memory, once one did not

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.module(inputs)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch_threads(self.threads):
            return self._run(batch).to(batch.device)

    def to_device(self, batch: torch.Tensor) -> torch.Tensor:
        """``batch`` on this runner's device, in its precision and layout (non-blocking from pinned memory)."""
        return batch.to(self.device.torch, non_blocking=True).to(self.dtype, memory_format=self.memory_format)

    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        if self.fits is not None and len(batch) > self.fits:
            return torch.cat([self._run(part) for part in batch.split(self.fits)])
        try:
            return self.forward(self.to_device(batch)).float()
        except torch.cuda.OutOfMemoryError:
            if len(batch) == 1:
                raise ResnetkitError(f"The model does not fit in the memory of {self.device.name} ({self.device}) "
                                     "even at batch 1; free the GPU or use --device cpu.") from None
            torch.cuda.empty_cache()
            self.fits = len(batch) // 2
            log.warning("out of GPU memory at batch %d on %s: running batches of at most %d from now on",
                        len(batch), self.device, self.fits)
            return self._run(batch)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads in PyTorch, then restore the previous setting."""
    previous = torch.get_num_threads()
    if threads is None or threads == previous:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def quiet_torch_jit() -> Iterator[None]:
    """Silence only PyTorch's deprecation notices for ``torch.jit``: TorchScript files are made and read
    with it on purpose (for LibTorch users), so the notice is not actionable for resnetkit's users."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r"`torch\.jit\.")
        yield


@contextlib.contextmanager
def captured_stdout() -> Iterator[None]:
    """Keep what a tool prints to stdout (ONNX Runtime's calibrator prints its statistics) out of the
    output; it is shown on stderr only if the block fails, for diagnosis."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    except BaseException:
        sys.stderr.write(buffer.getvalue())
        raise


@contextlib.contextmanager
def progress_to_stderr() -> Iterator[None]:
    """Send the chatter quantization tools print to stdout to stderr (stdout may be JSON)."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def pt2e_int8(module: nn.Module, example: torch.Tensor, quantizer: Any, calibration: Sequence[torch.Tensor], *,
              fold_quantize: bool = True) -> torch.fx.GraphModule:
    """``module`` quantized to int8 by PyTorch's PT2E flow with ``quantizer`` (the target runtime's own), its
    activation ranges observed on ``calibration`` in slices of ``example``'s batch size (the graph is exported
    for that fixed batch); ``fold_quantize=False`` leaves the weights' Quantize nodes for a converter that folds
    them itself (litert-torch)."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if not calibration:
        raise ResnetkitError("int8 needs calibration images: --calib DIR (a few hundred representative images).")
    graph = torch.export.export(module.eval(), (example,)).module()
    prepared = prepare_pt2e(graph, quantizer)
    size = len(example)
    with torch.no_grad():
        for batch in calibration:
            for start in range(0, len(batch) - size + 1, size):
                prepared(batch[start:start + size].float())
    return move_exported_model_to_eval(convert_pt2e(prepared, fold_quantize=fold_quantize))


def in_fixed_batches(run: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor, size: int) -> torch.Tensor:
    """``run`` (a graph compiled for batches of exactly ``size``) over ``batch`` in slices of that size, the last
    one zero-padded; the logits of the real inputs."""
    if len(batch) == size:
        return run(batch)
    pad = -len(batch) % size
    padded = torch.cat([batch, batch.new_zeros(pad, *batch.shape[1:])]) if pad else batch
    return torch.cat([run(part) for part in padded.split(size)])[:len(batch)]
