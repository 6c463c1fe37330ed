"""Inference backends behind one small interface, and the one registry that describes them.

A :class:`Runner` maps a float32 NCHW batch (already preprocessed) to float32 logits and
says which backend and numeric precision actually ran. Each backend registers once, with
a typed :class:`Backend` record: what it is, the precisions it runs, its default precision
on this CPU, the files it reads, the package it needs and how to build a runner for a torch
module. Precision checks, ``resnetkit backends``, ``auto``'s candidates, file loading, bench
and serve read this registry and nothing else. Backends are the modules of this package
(discovered with pkgutil) and the entry-point group ``resnetkit.backends`` (third-party).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import pkgutil
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch
from torch import nn

from ..core.device import CPU, Device, resolve_device
from ..core.errors import BackendUnavailableError, UnknownModelError
from ..core.spec import ModelMeta

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "resnetkit.backends"
FLOAT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class Runner(Protocol):
    """Maps a preprocessed float32 NCHW batch to float32 logits on the batch's own device. Runners may also
    say ``device`` (a :class:`Device`; absent: the CPU), ``threads`` (intra-op threads they run on) and
    ``auto`` (True when ``auto`` chose them): :func:`run_info` reads them."""

    backend: str
    precision: str

    def __call__(self, batch: torch.Tensor) -> torch.Tensor: ...


TrialGate = Callable[[], AbstractContextManager[object]]


@dataclass(frozen=True)
class RunnerOptions:
    """Where and how a model runs, besides the module. ``None`` means "the backend's default"."""

    batch_size: int = 1  # a hint for backends that compile for a shape
    precision: str | None = None  # fp32 | fp16 | bf16 | int8 ...
    calibration: Sequence[torch.Tensor] | None = None  # preprocessed batches, for int8
    threads: int | None = None  # intra-op threads of this runner (None: the runtime's default; CPU only)
    retune: bool = False  # auto: measure again instead of reading the tuning cache
    device: Device = field(default_factory=lambda: resolve_device("auto"))
    # auto times its candidates inside this (bench passes one that keeps its other processes off the CPU)
    trial_gate: TrialGate | None = field(default=None, compare=False)

    def on(self, device: Device) -> "RunnerOptions":
        return replace(self, device=device)


@dataclass(frozen=True)
class RunInfo:
    """What ran and where, as data: the one source of every label and JSON field about a runner."""

    backend: str
    precision: str
    device: Device = CPU
    auto: bool = False  # chosen by the auto backend
    threads: int | None = None

    def label(self) -> str:
        """For people: ``openvino/bf16 on CPU (auto)``, ``cuda-graph/fp16 on NVIDIA H200 (auto)``, ``eager/fp32 on CPU``."""
        return f"{self.backend}/{self.precision} on {self.device.name}" + (" (auto)" if self.auto else "")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "device": str(self.device), "device_name": self.device.name, "label": self.label()}


def run_info(runner: Runner) -> RunInfo:
    """The facts a runner reports about itself (plug-ins that say less run on the CPU, not chosen by auto)."""
    return RunInfo(runner.backend, runner.precision, getattr(runner, "device", CPU), getattr(runner, "auto", False),
                   getattr(runner, "threads", None))


BackendFactory = Callable[[nn.Module, ModelMeta, RunnerOptions], Runner]
# A file reader: (path, options) -> the runner and the metadata stored in the file.
FileReader = Callable[[Path, RunnerOptions], "tuple[Runner, ModelMeta]"]


@dataclass(frozen=True)
class FileFormat:
    """Files a backend reads: their suffixes, a name for messages, the reader, and whether
    the backend is these files' own runtime (used when no backend is asked for)."""

    suffixes: tuple[str, ...]
    kind: str  # e.g. "an ONNX graph"
    read: FileReader
    own_runtime: bool = True


@dataclass(frozen=True)
class Backend:
    """One inference backend, as registered."""

    name: str
    description: str  # one line for ``resnetkit backends``
    precisions: tuple[str, ...]  # what it runs
    factory: BackendFactory | None = None  # torch module -> runner (None: runs files only)
    default_precision: Callable[[Device], str] = lambda device: "fp32"  # on this machine's device
    devices: tuple[str, ...] = ("cpu",)  # the device kinds it runs on ("cpu", "cuda")
    formats: tuple[FileFormat, ...] = ()
    package: str = "torch"  # the distribution whose version ``resnetkit backends`` shows
    imports: tuple[str, ...] = ()  # modules that must be importable for it to be available
    install_hint: str = ""
    tried_by_auto: bool = True  # False for backends whose start-up cost is too high to measure on the fly
    # reads every format some other backend reads (auto: measures the backends that read it)
    reads_any: FileReader | None = None

    def is_available(self) -> bool:
        return all(importlib.util.find_spec(name) is not None for name in self.imports)

    def version(self) -> str | None:
        try:
            return importlib.metadata.version(self.package)
        except importlib.metadata.PackageNotFoundError:
            return None

    def check_precision(self, precision: str) -> None:
        """Refuse a precision this backend does not run, saying what it does run."""
        if precision not in self.precisions:
            raise BackendUnavailableError(
                f"The {self.name} backend runs {', '.join(self.precisions)}, not '{precision}'. "
                "See 'resnetkit backends' and 'resnetkit quantize'."
            )

    def reader(self, suffix: str) -> FileFormat | None:
        return next((f for f in self.formats if suffix in f.suffixes), None)

    def fit_device(self, device: Device) -> Device:
        """``device`` if this backend runs there; the CPU when ``--device auto`` chose a GPU it cannot use;
        otherwise a clear error."""
        if device.kind in self.devices:
            return device
        if device.auto and "cpu" in self.devices:
            return Device(auto=True)
        raise BackendUnavailableError(
            f"The {self.name} backend runs on {' and '.join(self.devices)}, not {device}. Use --device "
            f"{self.devices[0]}, or a backend that runs on {device.kind} (see 'resnetkit backends')."
        )


_BACKENDS: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    """Add ``backend`` to the registry; a second backend with the same name is a programming error."""
    if backend.name in _BACKENDS:
        raise ValueError(f"backend {backend.name!r} is already registered")
    _BACKENDS[backend.name] = backend
    return backend


def load_backend_modules() -> None:
    """Import every module of this package once, then the ``resnetkit.backends`` entry points;
    each registers its backend on import. Discovery instead of a list: adding a backend is adding a module."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    package = importlib.import_module(__package__)
    for module in pkgutil.iter_modules(package.__path__):
        if module.name not in _SUPPORT_MODULES:
            importlib.import_module(f"{__package__}.{module.name}")
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry_point.load()
        except Exception as exc:  # noqa: BLE001 - a broken plug-in must not break resnetkit
            log.warning("backend plug-in %s could not be loaded: %s", entry_point.name, exc)


_LOADED = False
_SUPPORT_MODULES = {"base", "common", "tuning"}


def registered() -> list[Backend]:
    """Every registered backend, in registration order."""
    load_backend_modules()
    return list(_BACKENDS.values())


def get_backend(name: str) -> Backend:
    """The available backend ``name``, or a clear error (unknown, or not installed here)."""
    load_backend_modules()
    backend = _BACKENDS.get(name)
    if backend is None:
        raise BackendUnavailableError(f"Unknown backend '{name}'. Choose one of: {', '.join(_BACKENDS)}.")
    if not backend.is_available():
        raise BackendUnavailableError(f"Backend '{name}' is not available on this machine. {backend.install_hint}".strip())
    return backend


DEFAULT_BACKEND = "auto"  # for PyTorch modules; files default to their own runtime


def module_backend(backend: str | None, options: RunnerOptions) -> tuple[Backend, RunnerOptions]:
    """The backend that will run a PyTorch module (``None``: :data:`DEFAULT_BACKEND`), checked to be available,
    to run modules, on the device and in the precision asked for; and the options with the device it will use."""
    chosen = get_backend(backend or DEFAULT_BACKEND)
    if chosen.factory is None:
        raise BackendUnavailableError(f"The {chosen.name} backend runs model files only, not PyTorch models.")
    if options.precision is not None:
        chosen.check_precision(options.precision)
    return chosen, options.on(chosen.fit_device(options.device))


def make_runner(module: nn.Module, meta: ModelMeta, backend: str | None = None,
                options: RunnerOptions | None = None) -> Runner:
    """A runner for ``module`` on ``backend`` (``None``: :data:`DEFAULT_BACKEND`)."""
    chosen, options = module_backend(backend, options or RunnerOptions())
    return chosen.factory(module, meta, options)  # type: ignore[misc]


def runner_label(runner: Runner) -> str:
    """What ran and where, for people (see :meth:`RunInfo.label`)."""
    return run_info(runner).label()


def file_suffixes() -> list[str]:
    return sorted({s for backend in registered() for f in backend.formats for s in f.suffixes})


def readers_of(suffix: str) -> dict[str, FileFormat]:
    """Backend name -> how it reads files ending in ``suffix``; the file's own runtime first."""
    found = {b.name: f for b in registered() for f in b.formats if suffix in f.suffixes and b.is_available()}
    return dict(sorted(found.items(), key=lambda item: not item[1].own_runtime))


def read_file(path: Path, backend: str | None, options: RunnerOptions) -> tuple[Runner, ModelMeta]:
    """Run the model file ``path`` on ``backend`` (``None``: the file's own runtime). A file computes
    in the precision it was made for; asking for another one is refused."""
    suffix = path.suffix.lower()
    if suffix not in file_suffixes():
        raise UnknownModelError(f"{path} is not a model file any backend reads (known suffixes: "
                                f"{', '.join(file_suffixes())}).")
    readers = readers_of(suffix)
    if not readers:
        raise BackendUnavailableError(f"No installed backend reads {suffix} files. See 'resnetkit backends'.")
    chosen = get_backend(backend or next(iter(readers)))
    if backend is not None and options.precision is not None:
        chosen.check_precision(options.precision)
    options = options.on(chosen.fit_device(options.device))
    if chosen.reads_any is not None:
        runner, meta = chosen.reads_any(path, options)
    elif (fmt := chosen.reader(suffix)) is not None:
        runner, meta = fmt.read(path, options)
    else:
        kind = next(iter(readers.values())).kind
        raise BackendUnavailableError(
            f"{path.name} is {kind}; the {chosen.name} backend cannot run it. Use --backend {' or '.join(readers)}, "
            "or leave --backend out to run it with its own runtime."
        )
    check_stored_precision(path, options.precision, runner.precision)
    return runner, meta


def check_stored_precision(path: Path, requested: str | None, stored: str) -> None:
    """Refuse a precision other than the one a file computes in as stored."""
    if requested is not None and requested != stored:
        raise BackendUnavailableError(
            f"{path.name} computes in {stored} as stored, not {requested}. Make a {requested} model with "
            "'resnetkit quantize' (fp16/bf16 also run from OpenVINO files with --backend openvino)."
        )
