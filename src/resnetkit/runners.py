"""Inference backends behind one small interface.

A :class:`Runner` maps a float32 NCHW batch (already preprocessed) to float32 logits and
says which backend and numeric precision actually ran. Backends register a factory here;
adding one is one ``register_backend`` call in the module that implements it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
from torch import nn

from .errors import BackendUnavailableError
from .spec import ModelMeta


class Runner(Protocol):
    backend: str
    precision: str

    def __call__(self, batch: torch.Tensor) -> torch.Tensor: ...


@dataclass
class EagerRunner:
    """Plain PyTorch eager execution in inference mode."""

    module: nn.Module
    device: str = "cpu"
    backend: str = "eager"
    precision: str = field(default="fp32")

    def __post_init__(self) -> None:
        self.module = self.module.to(self.device).eval()
        dtype = next(iter(self.module.parameters()), torch.empty(0)).dtype
        self.precision = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, self.precision)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision, batch.dtype)
            return self.module(batch.to(self.device, dtype)).float().cpu()


# factory(module, meta, batch_size) -> Runner; batch_size is a hint for backends that compile.
BackendFactory = Callable[[nn.Module, ModelMeta, int], Runner]


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


def backend_names() -> list[str]:
    return list(_BACKENDS)


def available_backends() -> list[str]:
    return [name for name, backend in _BACKENDS.items() if backend.is_available()]


def get_backend(name: str) -> Backend:
    backend = _BACKENDS.get(name)
    if backend is None:
        raise BackendUnavailableError(f"Unknown backend '{name}'. Choose one of: {', '.join(_BACKENDS)}.")
    if not backend.is_available():
        raise BackendUnavailableError(f"Backend '{name}' is not available on this machine. {backend.install_hint}".strip())
    return backend


def make_runner(module: nn.Module, meta: ModelMeta, backend: str = "eager", batch_size: int = 1) -> Runner:
    """A runner for ``module`` on ``backend``."""
    return get_backend(backend).factory(module, meta, batch_size)


register_backend("eager", lambda module, meta, batch_size: EagerRunner(module))
