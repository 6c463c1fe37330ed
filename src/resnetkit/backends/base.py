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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

import torch
from torch import nn

from ..core.errors import BackendUnavailableError, UnknownModelError
from ..core.spec import ModelMeta

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "resnetkit.backends"
FLOAT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class Runner(Protocol):
    backend: str
    precision: str

    def __call__(self, batch: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class RunnerOptions:
    """What a backend needs besides the module. ``None`` means "the backend's default"."""

    batch_size: int = 1  # a hint for backends that compile for a shape
    precision: str | None = None  # fp32 | fp16 | bf16 | int8 ...
    calibration: Sequence[torch.Tensor] | None = None  # preprocessed batches, for int8
    threads: int | None = None  # intra-op threads of this runner (None: the runtime's default)
    retune: bool = False  # auto: measure again instead of reading the tuning cache


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
    default_precision: Callable[[], str] = lambda: "fp32"  # on this CPU
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


_BACKENDS: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    """Add ``backend`` to the registry; a second backend with the same name is a programming error."""
    if backend.name in _BACKENDS:
        raise ValueError(f"backend {backend.name!r} is already registered")
    _BACKENDS[backend.name] = backend
    return backend


def register_backend(name: str, factory: BackendFactory, *, precisions: tuple[str, ...] = tuple(FLOAT_DTYPES),
                     description: str = "") -> Backend:
    """Shorthand for a module-only backend (e.g. a runner wrapper in tests or a plug-in)."""
    return register(Backend(name, description or f"{name} backend", precisions, factory))


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


def backend_names() -> list[str]:
    load_backend_modules()
    return list(_BACKENDS)


def registered() -> list[Backend]:
    """Every registered backend, in registration order."""
    load_backend_modules()
    return list(_BACKENDS.values())


def available_backends() -> list[str]:
    return [backend.name for backend in registered() if backend.is_available()]


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


def module_backend(backend: str | None, options: RunnerOptions) -> Backend:
    """The backend that will run a PyTorch module (``None``: :data:`DEFAULT_BACKEND`), checked
    to be available, to run modules and to run the requested precision."""
    chosen = get_backend(backend or DEFAULT_BACKEND)
    if chosen.factory is None:
        raise BackendUnavailableError(f"The {chosen.name} backend runs model files only, not PyTorch models.")
    if options.precision is not None:
        chosen.check_precision(options.precision)
    return chosen


def make_runner(module: nn.Module, meta: ModelMeta, backend: str | None = None,
                options: RunnerOptions | None = None) -> Runner:
    """A runner for ``module`` on ``backend`` (``None``: :data:`DEFAULT_BACKEND`)."""
    options = options or RunnerOptions()
    return module_backend(backend, options).factory(module, meta, options)  # type: ignore[misc]


def runner_label(runner: Runner) -> str:
    """What ran, for people: ``openvino/bf16 (auto)``, ``eager/fp32``."""
    name = runner.backend.removesuffix(" (auto)")
    return f"{name}/{runner.precision}" + (" (auto)" if name != runner.backend else "")


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
