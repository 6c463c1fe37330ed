"""Model references: a zoo name or a file written by resnetkit -> a ready :class:`Classifier`."""

from __future__ import annotations

import dataclasses
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..backends import tuning
from ..backends.base import FLOAT_DTYPES, RunInfo, Runner, RunnerOptions, file_suffixes, module_backend, read_file, run_info
from ..core.artifacts import ARTIFACT_SUFFIXES, load_artifact
from ..core.device import resolve_device
from ..core.errors import ModelOutputError, ModuleRequiredError, UnknownModelError, WeightsError
from ..core.images import prepare_image
from ..core.spec import ModelMeta, ModelSpec
from ..core.weights import extract_state_dict, load_published, safe_load
from ..core.zoo import get_spec, is_zoo_name
from ..interop.hf import read_folder


@dataclass
class Classifier:
    """A loaded model: metadata, a runner that computes logits, and the torch module if any."""

    meta: ModelMeta
    runner: Runner
    module: nn.Module | None = None

    def __repr__(self) -> str:
        """One line, without the module's layers (tens of thousands of characters) and without building a lazy
        runner: what runs it is said once it is known."""
        runner = self.runner.if_built if isinstance(self.runner, LazyRunner) else self.runner
        ran = f", {run_info(runner).label()}" if runner is not None else ", runner built on first use"
        return f"Classifier({self.meta.name}: {self.meta.arch}, {self.meta.num_classes} classes{ran})"

    @property
    def transform(self) -> Callable[[Any], torch.Tensor]:
        """The reference preprocessing of a PIL image (torchvision's transforms)."""
        return self.meta.preprocessing.transform()

    def prepare(self, source: bytes | str | os.PathLike[str], **checks: Any) -> torch.Tensor:
        """``source`` (file or encoded bytes) as this model's input tensor, by the fast image path
        (:func:`~resnetkit.core.images.prepare_image`; ``checks``: its ``max_pixels`` / ``allow_multi_frame``)."""
        return prepare_image(source, self.meta.preprocessing, **checks)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """The runner's outputs for ``batch``, unless some are NaN or inf: then a :class:`ModelOutputError` saying
        why that happens, instead of NaN scores or an accuracy that look like answers (or break JSON)."""
        outputs = self.runner(batch)
        broken = int((~outputs.isfinite().all(dim=1)).sum())
        if broken:
            raise ModelOutputError(
                f"{self.meta.name} computed outputs that are not numbers (NaN or inf) for {broken} of "
                f"{len(outputs)} images on {self.ran.label()}: its weights are broken (e.g. saved by a training run "
                "that diverged) or the precision overflowed. Check the model file, or run it in fp32 (--precision fp32).")
        return outputs

    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Softmax of the logits; on the CPU computed by numpy, for the reason
        :func:`~resnetkit.core.images.stack_inputs` gives (torch's softmax of 16 x 1000 logits cost the next
        OpenVINO forward pass as much as a torch.stack)."""
        logits = self.logits(batch).float()
        if logits.device.type != "cpu":
            return torch.softmax(logits, dim=1)
        values = logits.numpy()
        exp = np.exp(values - values.max(axis=1, keepdims=True))
        return torch.from_numpy(exp / exp.sum(axis=1, keepdims=True))

    @property
    def ran(self) -> RunInfo:
        """What runs the model and where (backend, precision, device, auto), as data."""
        return run_info(self.runner)

    def torch_module(self, command: str) -> nn.Module:
        """The PyTorch module, or a clear error for a model loaded from an exported file, which ``command`` cannot use."""
        if self.module is None:
            raise ModuleRequiredError(
                f"'{command}' needs the PyTorch model, but {self.meta.name} was loaded from an exported file (run by "
                f"{self.runner.backend}), which keeps only the logits output. Use the zoo name ({self.meta.arch}) or "
                "the .pt model it was exported from.")
        return self.module


class LazyRunner:
    """A runner built on first use, so loading a model only for its module (to train or export
    it) builds and tunes nothing; attributes are those of the built runner. Built once even when
    several threads (a threaded web server) make the first call together."""

    def __init__(self, build: Callable[[], Runner]) -> None:
        self._build = build
        self._runner: Runner | None = None
        self._building = threading.Lock()

    @property
    def built(self) -> Runner:
        if self._runner is None:
            with self._building:
                if self._runner is None:
                    self._runner = self._build()
        return self._runner

    @property
    def if_built(self) -> Runner | None:
        """The runner if it was built, without building it."""
        return self._runner

    def __getattr__(self, name: str) -> Any:  # backend, precision, timings_ms, ...
        return getattr(self.built, name)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.built(batch)


def module_classifier(module: nn.Module, meta: ModelMeta, backend: str | None, options: RunnerOptions) -> Classifier:
    """``module`` behind a runner of ``backend`` (``None``: auto), checked now and built on first use."""
    chosen, options = module_backend(backend, options)
    return Classifier(meta, LazyRunner(lambda: chosen.factory(module, meta, options)), module)  # type: ignore[misc]


def _load_file_weights(spec: ModelSpec, module: nn.Module, path: Path) -> None:
    checkpoint = safe_load(path)
    if isinstance(checkpoint, dict) and "resnetkit" in checkpoint:
        checkpoint = checkpoint["state_dict"]
    try:
        module.load_state_dict(extract_state_dict(checkpoint))
    except RuntimeError as exc:
        detail = str(exc).splitlines()[0]
        raise WeightsError(f"{path} does not fit {spec.name}: {detail}. Is it a checkpoint of this architecture?") from None


def load_model(
    ref: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str] | None = None,
    pretrained: bool = True,
    backend: str | None = None,
    options: RunnerOptions | None = None,
    progress: bool | None = None,
    device: str | torch.device | None = None,
) -> Classifier:
    """Load a model reference: a zoo name (with published, chosen or no weights) or an artifact path.

    ``weights`` is a weights tag of the zoo model (e.g. ``IMAGENET1K_V2``) or a checkpoint
    file; ``pretrained=False`` gives random weights (enough to measure cost). ``backend``
    and ``options`` (precision, batch-size hint...) choose how the model runs. ``backend=None``:
    zoo models and ``.pt`` artifacts run on ``auto`` (the fastest measured backend, in the
    default precision of :mod:`resnetkit.backends.auto`, or the precision an artifact stores);
    other files on their own runtime from the backend registry (ONNX Runtime for ``.onnx``,
    OpenVINO for ``.xml``, TorchScript for ``.torchscript``). ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``)
    is where it runs, shorthand for ``options.device`` (default ``auto``: the first CUDA GPU, else the CPU).
    The runner is built on first use.
    """
    if not isinstance(ref, (str, os.PathLike)):
        raise UnknownModelError(f"load_model takes a zoo name or a model file's path, not a {type(ref).__name__}; "
                                "weights of a zoo architecture saved with torch.save(module.state_dict(), FILE) "
                                "load as load_model(ARCH, weights=FILE).")
    ref, weights = str(ref), None if weights is None else str(weights)
    options = options or RunnerOptions()
    if device is not None:
        options = options.on(resolve_device(str(device)))
    if is_zoo_name(ref):
        spec = get_spec(ref)
        module, meta = _zoo_module(spec, weights, pretrained, progress)
        return module_classifier(module, meta, backend, options)
    path = Path(ref)
    if path.exists():
        if weights:
            raise UnknownModelError(f"--weights only applies to zoo models; {ref} already carries its weights.")
        if path.is_dir() and path.suffix.lower() not in file_suffixes():  # a Hugging Face transformers-format folder
            module, meta = read_folder(path)
            return module_classifier(module, meta, backend, options)
        if path.suffix.lower() in ARTIFACT_SUFFIXES:
            module, meta = load_artifact(path)
            return module_classifier(module, meta, backend, _stored_precision(meta, options))
        if path.suffix.lower() not in file_suffixes():
            known = ", ".join([*ARTIFACT_SUFFIXES, *file_suffixes()])
            raise UnknownModelError(f"{ref} is not a model file resnetkit can read (known suffixes: {known}).")
        runner, meta = read_file(path, backend, options)
        return Classifier(meta, runner)
    raise _unknown(ref)


def check_model_ref(ref: str | os.PathLike[str]) -> None:
    """Fail fast, before anything is loaded or written, on a reference that is neither a zoo name nor an
    existing path (the error suggests zoo names)."""
    if not is_zoo_name(str(ref)) and not Path(ref).exists():
        raise _unknown(str(ref))


def _unknown(ref: str) -> UnknownModelError:
    """Why ``ref`` names no model: a missing file if it looks like a path, else an unknown zoo name (with the closest)."""
    path = Path(ref)
    if os.sep in ref or path.suffix.lower() in (*ARTIFACT_SUFFIXES, *file_suffixes()):
        return UnknownModelError(f"No such model file: {ref}. Pass the path of a model file written by resnetkit "
                                 "(or exported by it), or a zoo name (see 'resnetkit models').")
    try:
        get_spec(ref)
    except UnknownModelError as exc:
        return exc
    raise AssertionError(f"{ref} is a zoo name")


def tuning_key(ref: str) -> str:
    """The key of ``auto``'s tuning cache for a model reference: a model file's bytes, else the module's tensor layout."""
    path = Path(ref)
    if not is_zoo_name(ref) and path.suffix.lower() in file_suffixes():
        return tuning.file_key(path)
    if is_zoo_name(ref):
        with torch.device("meta"):  # the tensor layout without allocating or initialising weights
            return tuning.module_key(get_spec(ref).build())
    return tuning.module_key(load_model(ref, pretrained=False, backend="eager").torch_module("tune"))


def _stored_precision(meta: ModelMeta, options: RunnerOptions) -> RunnerOptions:
    """Weights stored in fp16/bf16 run as stored unless another precision is asked for."""
    if options.precision is None and meta.precision in FLOAT_DTYPES and meta.precision != "fp32":
        return dataclasses.replace(options, precision=meta.precision)
    return options


RANDOM_WEIGHTS_SEED = 0


def _zoo_module(spec: ModelSpec, weights: str | None, pretrained: bool, progress: bool | None) -> tuple[nn.Module, ModelMeta]:
    module = spec.build() if pretrained else _random_module(spec)
    if weights and not any(w.tag.upper() == weights.upper() for w in spec.weights) and weights.upper() != "DEFAULT":
        path = Path(weights)
        if not path.is_file():
            tags = ", ".join(w.tag for w in spec.weights)
            raise WeightsError(f"--weights '{weights}' is neither a weights tag of {spec.name} ({tags}) nor an existing file.")
        _load_file_weights(spec, module, path)
        return module.eval(), spec.meta().replace(weights=str(path))
    chosen = spec.get_weights(weights)
    if not pretrained:
        return module.eval(), spec.meta(chosen, random=True)
    module.load_state_dict(load_published(spec.name, chosen, progress=progress))
    return module.eval(), spec.meta(chosen)


def _random_module(spec: ModelSpec) -> nn.Module:
    """``spec``'s module with its random initialisation drawn from a fixed seed: random weights are the
    same on every load (results repeat, and converted models can be cached on disk) and the caller's
    random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        return spec.build()
