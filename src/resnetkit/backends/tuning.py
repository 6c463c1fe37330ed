"""``auto``'s tuning cache: what it measured, per model, batch size, machine and library versions.

One JSON file in the user cache directory (platformdirs; ``RESNETKIT_TUNING_CACHE`` names
another file). An entry is found again only on the same device of the same machine (CPU model and
usable cores; or GPU name, driver, CUDA and cuDNN versions) with the same library versions;
otherwise ``auto`` measures again and replaces it.
The model key is its tensors' names, shapes and dtypes (weight values do not change speed, so trained and
random weights of one architecture share an entry) or, for a model file, the file's bytes.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..core.device import CPU, Device, cpu_name, gpu_facts, usable_cores
from ..core.fileio import write_text_atomic

ENV_VAR = "RESNETKIT_TUNING_CACHE"
CACHE_VERSION = 5  # 5: earlier trials timed each candidate while the one before still spun its threads (ORT, PyTorch)
LIBRARIES = ("torch", "onnxruntime", "openvino")


def cache_path() -> Path:
    """The tuning cache file (``$RESNETKIT_TUNING_CACHE`` or ``<user cache dir>/resnetkit/tuning.json``)."""
    override = os.environ.get(ENV_VAR)
    if override:
        return Path(override)
    import platformdirs

    return platformdirs.user_cache_path("resnetkit") / "tuning.json"


def machine(device: Device = CPU) -> dict[str, Any]:
    """What makes a measurement on ``device`` valid elsewhere: the CPU model and usable cores, or the GPU, its
    driver and CUDA/cuDNN versions; and the library versions."""
    where = {"gpu": gpu_facts(device.index or 0)} if device.is_cuda else {"cpu": cpu_name(), "cores": usable_cores()}
    return {**where, "libraries": {name: _version(name) for name in LIBRARIES}}


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def module_key(module: nn.Module) -> str:
    """A digest of the module's tensor names, shapes and dtypes."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
    return digest.hexdigest()[:20]


def file_key(path: Path) -> str:
    """A digest of a model file's bytes (and of its OpenVINO .bin, if any)."""
    digest = hashlib.sha256()
    for part in (path, path.with_suffix(".bin")):
        if part == path or (path.suffix.lower() == ".xml" and part.exists()):
            with open(part, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:20]


@dataclass(frozen=True)
class Candidate:
    """One way to run a model: a backend, a precision (None: the file's own) and intra-op threads (None: the
    runtime's own setting; always None on a GPU)."""

    backend: str
    precision: str | None
    threads: int | None

    @property
    def label(self) -> str:
        threads = f"/{self.threads}t" if self.threads else ""
        return f"{self.backend}/{self.precision or 'stored'}{threads}"


@dataclass
class Tuning:
    """auto's measurements for one model at one batch size on one machine."""

    model: str  # a readable name; the key is ``model_key``
    model_key: str
    batch_size: int
    precision: str | None  # requested (None: auto's default)
    threads: int | None  # requested (None: auto tried the runtime's own setting and one thread)
    choice: Candidate
    timings_ms: dict[str, float]  # candidate label -> median latency
    machine: dict[str, Any] = field(default_factory=machine)  # where it was measured (see :func:`machine`)
    measured_at: float = field(default_factory=time.time)
    load_1min: float | None = field(default_factory=lambda: os.getloadavg()[0] if hasattr(os, "getloadavg") else None)

    def matches(self, model_key: str, batch_size: int, precision: str | None, threads: int | None) -> bool:
        return (self.model_key, self.batch_size, self.precision, self.threads) == (model_key, batch_size, precision,
                                                                                  threads)

    def same_device(self, other: "Tuning") -> bool:
        """Measured on the same kind of device (the same CPU model, or the same GPU), whatever the library versions."""
        where = lambda t: (t.machine.get("cpu"), (t.machine.get("gpu") or {}).get("gpu"))  # noqa: E731
        return where(self) == where(other)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Tuning":
        return cls(**{**data, "choice": Candidate(**data["choice"])})


def entries() -> list[Tuning]:
    """Every entry of the cache file (an unreadable or outdated file counts as empty)."""
    try:
        data = json.loads(cache_path().read_text())
        if data.get("version") != CACHE_VERSION:
            return []
        return [Tuning.from_dict(entry) for entry in data["entries"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def lookup(model_key: str, batch_size: int, precision: str | None, threads: int | None,
           device: Device = CPU) -> Tuning | None:
    """The entry for this model, batch size, precision and thread request measured on this device of this machine
    with these libraries."""
    where = machine(device)
    return next((t for t in entries() if t.matches(model_key, batch_size, precision, threads)
                 and t.machine == where), None)


def store(tuning: Tuning) -> None:
    """Add ``tuning``, replacing any entry for the same model, batch size, precision and threads on the same
    device (atomic write)."""
    kept = [t for t in entries() if not (t.matches(tuning.model_key, tuning.batch_size, tuning.precision,
                                                   tuning.threads) and t.same_device(tuning))]
    _write([*kept, tuning])


def clear(model_key: str | None = None) -> int:
    """Remove the entries of one model (all batch sizes), or all; returns how many were removed."""
    current = entries()
    kept = [t for t in current if model_key is not None and t.model_key != model_key]
    _write(kept)
    return len(current) - len(kept)


def _write(items: list[Tuning]) -> None:
    write_text_atomic(cache_path(), json.dumps({"version": CACHE_VERSION, "entries": [t.to_dict() for t in items]},
                                               indent=1))
