"""Inference backends behind one small interface.

A :class:`Runner` maps a float32 NCHW batch (already preprocessed) to float32 logits and
says which backend and numeric precision actually ran. Backends register a factory here;
adding one is one ``register_backend`` call in the module that implements it.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch
from torch import nn

from ..core.errors import BackendUnavailableError
from ..core.spec import ModelMeta


class Runner(Protocol):
    backend: str
    precision: str

    def __call__(self, batch: torch.Tensor) -> torch.Tensor: ...


FLOAT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class RunnerOptions:
    """What a backend needs besides the module. ``None`` means "the backend's default"."""

    batch_size: int = 1  # a hint for backends that compile for a shape
    precision: str | None = None  # fp32 | fp16 | bf16 | int8 ...
    device: str = "cpu"
    calibration: Sequence[torch.Tensor] | None = None  # preprocessed batches, for int8


@dataclass
class EagerRunner:
    """Plain PyTorch eager execution in inference mode, in fp32, fp16 or bf16 weights."""

    module: nn.Module
    precision: str = "fp32"
    device: str = "cpu"
    backend: str = "eager"

    def __post_init__(self) -> None:
        if self.precision not in FLOAT_DTYPES:
            raise BackendUnavailableError(
                f"The eager backend runs {', '.join(FLOAT_DTYPES)}; for '{self.precision}' use 'resnetkit quantize'."
            )
        self.dtype = FLOAT_DTYPES[self.precision]
        self.module = self.module.to(self.device, self.dtype).eval()

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(batch.to(self.device, self.dtype)).float().cpu()


BackendFactory = Callable[[nn.Module, ModelMeta, RunnerOptions], Runner]


@dataclass(frozen=True)
class Backend:
    name: str
    factory: BackendFactory
    is_available: Callable[[], bool]
    install_hint: str = ""


_BACKENDS: dict[str, Backend] = {}


def register_backend(name: str, factory: BackendFactory, is_available: Callable[[], bool] = lambda: True,
                     install_hint: str = "") -> None:
    if name in _BACKENDS:
        raise ValueError(f"backend {name!r} is already registered")
    _BACKENDS[name] = Backend(name, factory, is_available, install_hint)


def load_backend_modules() -> None:
    """Import every module of this package once; each registers its backend (and file readers) on import.

    Discovery instead of a list: adding a backend is adding a module, nothing else."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    package = importlib.import_module(__package__)
    for module in pkgutil.iter_modules(package.__path__):
        if module.name not in _SUPPORT_MODULES:
            importlib.import_module(f"{__package__}.{module.name}")


_LOADED = False
_SUPPORT_MODULES = {"base", "common"}


def backend_names() -> list[str]:
    load_backend_modules()
    return list(_BACKENDS)


def available_backends() -> list[str]:
    load_backend_modules()
    return [name for name, backend in _BACKENDS.items() if backend.is_available()]


def get_backend(name: str) -> Backend:
    load_backend_modules()
    backend = _BACKENDS.get(name)
    if backend is None:
        raise BackendUnavailableError(f"Unknown backend '{name}'. Choose one of: {', '.join(_BACKENDS)}.")
    if not backend.is_available():
        raise BackendUnavailableError(f"Backend '{name}' is not available on this machine. {backend.install_hint}".strip())
    return backend


DEFAULT_BACKEND = "eager"  # for PyTorch modules; exported files default to their own runtime


def make_runner(module: nn.Module, meta: ModelMeta, backend: str | None = None,
                options: RunnerOptions | None = None) -> Runner:
    """A runner for ``module`` on ``backend`` (``None``: eager PyTorch)."""
    return get_backend(backend or DEFAULT_BACKEND).factory(module, meta, options or RunnerOptions())


register_backend("eager", lambda module, meta, options: EagerRunner(module, options.precision or "fp32", options.device))
