"""How a run uses its machine: precision, memory format, data workers, pinned memory, compilation.

A :class:`TrainConfig` holds what the user asked for (``None``: the default for the device);
:func:`plan` turns it into the settings that run on a resolved :class:`~resnetkit.core.device.Device`,
which every epoch line, the summary and the benchmarks report.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from ..core.device import Device, supports_bf16, usable_cores
from .config import TrainConfig, TrainingError

# Batches each worker keeps ready on CUDA (the DataLoader's default is 2): a step that waits for one slow
# batch then finds the next ones done.
CUDA_PREFETCH = 4
PRECISION_NAMES = {"fp32": "fp32", "fp16": "fp16 autocast + gradient scaler", "bf16": "bf16 autocast"}
COMPILE_NOTE = "compiling: the first step takes tens of seconds (and the epoch's last, smaller batch compiles again)"


@dataclass(frozen=True)
class Hardware:
    """The settings a run trains with on ``device``; ``workers`` are data-loading processes (0: the main one)."""

    device: Device
    precision: str  # fp32 | fp16 | bf16
    channels_last: bool
    workers: int
    pin_memory: bool
    compile: bool

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)

    @property
    def scales_gradients(self) -> bool:
        """fp16 gradients underflow without a gradient scaler; bf16 has fp32's range."""
        return self.precision == "fp16"

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def loader_options(self) -> dict[str, Any]:
        """DataLoader keywords: workers kept alive across epochs, pinned batches for fast copies to the GPU."""
        if not self.workers:
            return {"num_workers": 0, "pin_memory": self.pin_memory}
        return {"num_workers": self.workers, "pin_memory": self.pin_memory, "persistent_workers": True,
                "prefetch_factor": CUDA_PREFETCH if self.device.is_cuda else 2}

    @contextlib.contextmanager
    def backend_flags(self) -> Iterator[None]:
        """On CUDA, cuDNN measures and keeps the fastest convolution algorithms for the run's fixed input size."""
        previous = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = previous or self.device.is_cuda
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = previous

    def to_dict(self) -> dict[str, Any]:
        return {"device": str(self.device), "device_name": self.device.name, "precision": self.precision,
                "channels_last": self.channels_last, "workers": self.workers, "pin_memory": self.pin_memory,
                "prefetch_factor": self.loader_options().get("prefetch_factor"), "compile": self.compile}

    def describe(self) -> str:
        """One phrase for the run's first log line."""
        parts = [f"device {self.device} ({self.device.name})", PRECISION_NAMES[self.precision],
                 "channels_last" if self.channels_last else "contiguous memory format",
                 f"{self.workers} data worker{'s' if self.workers > 1 else ''}" if self.workers
                 else "data loaded in the main process"]
        if self.pin_memory:
            parts.append("pinned memory")
        if self.compile:
            parts.append("torch.compile")
        return ", ".join(parts)


def plan(config: TrainConfig, device: Device, processes_here: int = 1) -> Hardware:
    """The settings ``config`` trains with on ``device``; ``processes_here`` training processes share the cores."""
    return Hardware(device=device, precision=precision(config, device),
                    channels_last=device.is_cuda if config.channels_last is None else config.channels_last,
                    workers=default_workers(processes_here) if config.workers is None else config.workers,
                    pin_memory=device.is_cuda, compile=config.compile)


def precision(config: TrainConfig, device: Device) -> str:
    """``--precision`` if given; ``--amp``: the device's mixed precision (fp16 on CUDA, bf16 on CPU);
    else fp16 on CUDA (the fastest measured there) and fp32 on CPU."""
    chosen = config.precision or (("fp16" if device.is_cuda else "bf16") if config.amp else None)
    chosen = chosen or ("fp16" if device.is_cuda else "fp32")
    if chosen == "fp16" and not device.is_cuda:
        raise TrainingError("--precision fp16 needs a CUDA GPU; on the CPU use --precision bf16 (mixed precision) "
                            "or fp32.")
    if chosen == "bf16" and device.is_cuda and not supports_bf16(device):
        raise TrainingError(f"{device.name} has no native bf16; use --precision fp16 (the default on CUDA) or fp32.")
    return chosen


def default_workers(processes_here: int = 1) -> int:
    """Data workers per training process: the usable cores minus one per process (for its own work), at least 1."""
    return max(1, usable_cores() // max(1, processes_here) - 1)


def processes_on_this_machine() -> int:
    """Training processes ``torchrun`` started on this machine (1 without it)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
