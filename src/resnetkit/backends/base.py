"""Inference backends behind one small interface, and the one registry that describes them.

A :class:`Runner` maps a float32 NCHW batch (already preprocessed) to float32 logits and
says which backend and numeric precision actually ran. Each backend registers once, with
a typed :class:`Backend` record: what it is, the precisions it runs, its default precision
on a device, the files it reads and writes (:class:`FileFormat`, with its :class:`FileWriter`
for ``resnetkit export``), the quantized files it writes (:class:`Quantizer`), how to tap the
pooled features of its runners, the package it needs and how to build a runner for a torch
module. Precision checks, ``resnetkit backends``, ``auto``'s candidates, file loading, export,
quantize, embed, bench and serve read this registry and nothing else. Backends are the modules
of this package (discovered with pkgutil) and the entry-point group ``resnetkit.backends`` (third-party).
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
from typing import Any, Callable, Iterable, Protocol, Sequence

import torch
from torch import nn

from ..core.device import CPU, Device, resolve_device
from ..core.errors import BackendUnavailableError, ResnetkitError, UnknownModelError
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
# runs auto's pickled trial job in a fresh process (see backends.trial), timing inside the gate if one is given
TrialProcess = Callable[[bytes, TrialGate | None], object]


@dataclass(frozen=True)
class RunnerOptions:
    """Where and how a model runs, besides the module. ``None`` means "the backend's default"."""

    batch_size: int = 1  # a hint for backends that compile for a shape
    precision: str | None = None  # fp32 | fp16 | bf16 | int8 ...
    calibration: Sequence[torch.Tensor] | None = None  # preprocessed batches, for int8
    threads: int | None = None  # intra-op threads of this runner (None: the runtime's default; CPU only)
    retune: bool = False  # auto: measure again instead of reading the tuning cache
    device: Device = field(default_factory=lambda: resolve_device("auto"))
    # auto times its candidates inside this, having built them (bench passes one that keeps its other processes off
    # the CPU)
    trial_gate: TrialGate | None = field(default=None, compare=False)
    # ... in a process this gives (bench: one forked from its fork server, where torch is imported), not a new Python
    trial_process: TrialProcess | None = field(default=None, compare=False)

    def on(self, device: Device) -> "RunnerOptions":
        return replace(self, device=device)


@dataclass(frozen=True)
class RunInfo:
    """What ran and where, as data: the one source of every label and JSON field about a runner."""

    backend: str
    precision: str
    device: Device = CPU
    chosen_by_auto: bool = False  # chosen by the auto backend, by measuring
    threads: int | None = None

    def label(self) -> str:
        """For people: ``openvino/bf16 on CPU (auto)``, ``cuda-graph/fp16 on NVIDIA H200 (auto)``, ``eager/fp32 on CPU``."""
        return f"{self.backend}/{self.precision} on {self.device.name}" + (" (auto)" if self.chosen_by_auto else "")

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
class ExportSettings:
    """What ``resnetkit export`` asks of a file writer; each writer uses the fields that apply to its files."""

    dynamic_batch: bool = False  # any batch size, where a format fixes one (else ``batch_size``)
    batch_size: int = 1
    opset: int | None = None  # ONNX opset (None: the writer's default)
    precision: str = "fp32"  # what the file stores: one of its writer's ``precisions``
    calibration: Sequence[torch.Tensor] = ()  # preprocessed batches, for int8 files


@dataclass(frozen=True)
class FileWriter:
    """How ``resnetkit export --format NAME`` writes a file format."""

    name: str  # the --format word, e.g. "onnx"
    write: Callable[[nn.Module, ModelMeta, Path, ExportSettings], None]  # an fp32 module on the CPU -> the file
    recorded: tuple[str, ...] = ()  # the ExportSettings fields recorded in the file's provenance
    checker: str | None = None  # the validator a file passes before it is written (a failure stops the export)
    precisions: tuple[str, ...] = ("fp32",)  # what ``--precision`` may ask it to store (int8: calibrated)
    # why its files cannot run on this machine (None: they can); export then checks them without predictions
    runs_here: Callable[[], str | None] = lambda: None
    # for files that cannot run here: what can be checked without running them (inputs, outputs, labels...)
    inspect: Callable[[Path], dict[str, Any]] | None = None


@dataclass(frozen=True)
class FileFormat:
    """Files a backend reads: their suffixes, a name for messages, the reader, whether the backend is
    these files' own runtime (used when no backend is asked for), and how ``export`` writes them."""

    suffixes: tuple[str, ...]
    kind: str  # e.g. "an ONNX graph"
    read: FileReader
    own_runtime: bool = True
    export: FileWriter | None = None  # None: read only
    companions: tuple[str, ...] = ()  # suffixes of the files written beside one (same stem), e.g. OpenVINO's .bin


@dataclass(frozen=True)
class QuantizeData:
    """What a quantizer is given besides the module, its metadata and the output path."""

    calibration: Sequence[torch.Tensor] = ()  # preprocessed batches, for quantizers that calibrate
    calibration_method: str = "histogram"  # activation ranges: histogram | percentile | minmax
    validation: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None  # (images, labels): accuracy control
    max_drop: float = 0.5  # top-1 points accuracy control may lose against the float model


@dataclass(frozen=True)
class Quantizer:
    """A model file a backend writes with ``resnetkit quantize --method METHOD``. The metadata it is given
    says the precision to store (``meta.precision``)."""

    method: str  # fp16 | bf16 | dynamic-int8 | static-int8
    suffix: str  # of the file it writes
    write: Callable[[nn.Module, ModelMeta, Path, QuantizeData], None]  # an fp32 module on the CPU -> the file
    default: bool = False  # the backend quantize picks for this method when none is asked for
    calibration: str | None = None  # its default activation-range method; set where it calibrates (needs --calib)
    accuracy_control: bool = False  # it takes labelled images (QuantizeData.validation)


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
    # its factory only reads the module (it converts it to another runtime's graph): auto's candidates on it share
    # one module instead of a copy each (8 copies of resnet152 took 1.4 s of its trial on a 2-core Zen 4)
    only_reads_module: bool = False
    # keeps device memory per batch size beyond the model's (CUDA graphs' buffers): auto picks it only when it is
    # clearly faster than the best candidate that does not
    memory_per_batch_size: bool = False
    # reads every format some other backend reads (auto: measures the backends that read it)
    reads_any: FileReader | None = None
    quantizers: tuple[Quantizer, ...] = ()
    int8_kernels: Callable[[Runner], dict[str, int]] | None = None  # the int8 kernels one of its runners executes
    # one of its runners of a model file -> a runner of the same graph returning the pooled features (None: no tap)
    features: Callable[[Runner], Runner | None] | None = None

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
    """Add ``backend`` to the registry; a second backend with the same name, or a second writer of an
    export format, is a programming error."""
    if backend.name in _BACKENDS:
        raise ValueError(f"backend {backend.name!r} is already registered")
    written = _writers(_BACKENDS.values())
    for name in _writers([backend]):
        if name in written:
            raise ValueError(f"export format {name!r} is already written by backend {written[name][0].name!r}")
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
_SUPPORT_MODULES = {"base", "common", "trial", "tuning"}


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


def _writers(backends: Iterable[Backend]) -> dict[str, tuple[Backend, FileFormat]]:
    return {f.export.name: (b, f) for b in backends for f in b.formats if f.export is not None}


def _by_name() -> list[Backend]:
    """The registered backends by name: an order that does not depend on which module was imported first."""
    return sorted(registered(), key=lambda b: b.name)


def export_formats() -> dict[str, tuple[Backend, FileFormat]]:
    """``resnetkit export --format NAME``: NAME -> the backend whose file format it is, and that format (by
    backend name)."""
    return _writers(_by_name())


def quantize_methods() -> list[str]:
    """The methods some backend writes with ``resnetkit quantize`` (by backend name, then as each lists them)."""
    return list(dict.fromkeys(q.method for b in _by_name() for q in b.quantizers))


def quantizers_of(method: str) -> list[tuple[Backend, Quantizer]]:
    """The backends that write ``method`` and how: the default first, then by name."""
    found = [(b, q) for b in _by_name() for q in b.quantizers if q.method == method]
    return sorted(found, key=lambda item: not item[1].default)


def file_suffixes() -> list[str]:
    return sorted({s for backend in registered() for f in backend.formats for s in f.suffixes})


def readers_of(suffix: str) -> dict[str, FileFormat]:
    """Backend name -> how it reads files ending in ``suffix``; the file's own runtime first."""
    found = {b.name: f for b in registered() for f in b.formats if suffix in f.suffixes and b.is_available()}
    return dict(sorted(found.items(), key=lambda item: not item[1].own_runtime))


def artifact_size(path: Path) -> int:
    """Bytes on disk: all files of a folder, or the file and those its format writes beside it (OpenVINO's .bin)."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    companions = {path.with_suffix(s) for f in readers_of(path.suffix.lower()).values() for s in f.companions}
    return path.stat().st_size + sum(c.stat().st_size for c in companions if c.exists())


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
    own = next(iter(readers.values()))
    _check_companions(path, own)
    if chosen.reads_any is not None:
        try:
            runner, meta = chosen.reads_any(path, options)
        except Exception:
            _read_or_explain(own, path, options)  # a file its own runtime cannot read either: say so
            raise
    elif (fmt := chosen.reader(suffix)) is not None:
        runner, meta = _read_or_explain(fmt, path, options)
    else:
        kind = next(iter(readers.values())).kind
        raise BackendUnavailableError(
            f"{path.name} is {kind}; the {chosen.name} backend cannot run it. Use --backend {' or '.join(readers)}, "
            "or leave --backend out to run it with its own runtime."
        )
    check_stored_precision(path, options.precision, runner.precision)
    return runner, meta


def _check_companions(path: Path, fmt: FileFormat) -> None:
    """Refuse a file whose format keeps part of the model beside it (OpenVINO's .bin) when that part is missing."""
    missing = [path.with_suffix(s).name for s in fmt.companions if not path.with_suffix(s).is_file()]
    if missing:
        raise UnknownModelError(f"{path} is incomplete: {' and '.join(missing)}, written beside it, is missing. Copy "
                                "it next to the file, or export the model again.")


def _read_or_explain(fmt: FileFormat, path: Path, options: RunnerOptions) -> tuple[Runner, ModelMeta]:
    """``fmt.read``, with the runtime's own failure (a protobuf, zip or parser error) turned into one line: the
    file is damaged. Errors resnetkit raises itself (no metadata...) pass as they are."""
    try:
        return fmt.read(path, options)
    except ResnetkitError:
        raise
    except Exception as exc:  # noqa: BLE001 - each runtime fails in its own way on a damaged file
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = (lines[-1].split(". ")[0] if lines else "") or type(exc).__name__
        beside = "".join(f" (with its {path.with_suffix(s).name})" for s in fmt.companions)
        raise UnknownModelError(f"{path}{beside} cannot be read as {fmt.kind}: it is corrupt, truncated or "
                                f"incomplete ({detail}). Export the model again, or copy the file again.") from None


def check_stored_precision(path: Path, requested: str | None, stored: str) -> None:
    """Refuse a precision other than the one a file computes in as stored."""
    if requested is not None and requested != stored:
        raise BackendUnavailableError(
            f"{path.name} computes in {stored} as stored, not {requested}. Make a {requested} model with "
            "'resnetkit quantize' (fp16/bf16 also run from OpenVINO files with --backend openvino)."
        )
