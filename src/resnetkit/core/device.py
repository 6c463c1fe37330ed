"""Where a model runs: the device record, the cores this process may use, and the names of the machine's CPU and GPU.

One word for the device everywhere (``--device auto|cpu|cuda|cuda:N``, ``RESNETKIT_DEVICE``):
``auto`` is the first CUDA GPU when torch sees one, else the CPU. Everything that asks how many
cores it may use, or what the CPU or GPU is called, asks this module.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import ResnetkitError

DEVICE_WORDS = "auto, cpu, cuda or cuda:N"


class DeviceError(ResnetkitError):
    """A device that is not a device word, or that this machine does not have."""


@dataclass(frozen=True)
class Device:
    """A resolved device: ``cpu`` or ``cuda`` with its index; ``auto`` says whether ``--device auto`` chose it."""

    kind: str = "cpu"  # "cpu" | "cuda"
    index: int | None = None  # the GPU's index (cuda only)
    auto: bool = False

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    @property
    def torch(self) -> torch.device:
        return torch.device(self.kind, self.index) if self.is_cuda else torch.device("cpu")

    def __str__(self) -> str:
        return f"cuda:{self.index}" if self.is_cuda else "cpu"

    @property
    def name(self) -> str:
        """What people call it: the GPU's name (``NVIDIA H200``), or ``CPU``."""
        return gpu_name(self.index or 0) if self.is_cuda else "CPU"

    @property
    def synchronize(self) -> Callable[[], None] | None:
        """Waits until the device has finished the work queued so far (None on the CPU, whose calls return
        when done): the hook a timer calls before reading the clock."""
        if not self.is_cuda:
            return None
        index = self.index or 0
        return lambda: torch.cuda.synchronize(index)

    def describe(self) -> dict[str, Any]:
        """The device's facts for a record: what it is and what a measurement on it depends on."""
        facts: dict[str, Any] = {"device": str(self), "name": self.name, "from_device_auto": self.auto}
        if self.is_cuda:
            facts.update(gpu_facts(self.index or 0))
        else:
            facts.update(cpu=cpu_name(), cores=usable_cores())
        return facts


CPU = Device()


def resolve_device(text: str | Device | None) -> Device:
    """``--device`` as a :class:`Device`: ``auto`` (or None) is ``cuda:0`` when torch sees a GPU, else the CPU;
    ``cuda`` is ``cuda:0``; a device this machine does not have is a :class:`DeviceError` saying what it has."""
    if isinstance(text, Device):
        return text
    word = (text or "auto").strip().lower()
    if word == "auto":
        return Device("cuda", 0, auto=True) if cuda_count() else Device(auto=True)
    if word == "cpu":
        return CPU
    kind, _, index = word.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise DeviceError(f"--device '{text}' is not a device: use {DEVICE_WORDS}.")
    count = cuda_count()
    if count == 0:
        raise DeviceError(f"--device {word}: torch sees no CUDA GPU here ({_why_no_gpu()}). Use --device cpu, or "
                          "--device auto, which takes a GPU when there is one.")
    number = int(index or 0)
    if number >= count:
        raise DeviceError(f"--device {word}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}.")
    return Device("cuda", number)


def cuda_count() -> int:
    """CUDA GPUs torch can use here (0 without a CUDA build of torch or without a driver)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _why_no_gpu() -> str:
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    return f"torch {torch.__version__} is built for CUDA {torch.version.cuda}, but finds no GPU or driver"


def usable_cores() -> int:
    """Cores this process may run on: the affinity mask (a container's cpuset, ``taskset``), else the CPU count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def machine_cores() -> int:
    """Every core of the machine, whatever this process may use: the scale of machine-wide figures (the load
    average, the busy time in ``/proc/stat``)."""
    return os.cpu_count() or 1


@lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The instruction-set flags of the CPU (``/proc/cpuinfo``, e.g. ``avx512_vnni``, ``amx_int8``); empty off Linux."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@lru_cache(maxsize=None)
def gpu_name(index: int = 0) -> str:
    return torch.cuda.get_device_name(index)


@lru_cache(maxsize=None)
def gpu_facts(index: int = 0) -> dict[str, Any]:
    """What a GPU measurement depends on: the GPU, its memory, the driver and the CUDA and cuDNN versions."""
    properties = torch.cuda.get_device_properties(index)
    return {"gpu": properties.name, "gpu_memory_mb": round(properties.total_memory / 1e6),
            "compute_capability": f"{properties.major}.{properties.minor}", "driver": driver_version(),
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}


def driver_version() -> str | None:
    """The NVIDIA driver's version, as the kernel module reports it (Linux), else None."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    words = text.split()
    return next((w for w in words if w[:1].isdigit() and w.count(".") >= 1), None)


def supports_bf16(device: Device) -> bool:
    """Whether the GPU computes bf16 natively (Ampere and later); the CPU's answer comes from its backends."""
    return device.is_cuda and torch.cuda.is_bf16_supported(including_emulation=False)
