"""Model references: a zoo name or a file written by resnetkit -> a ready :class:`Classifier`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .errors import UnknownModelError, WeightsError
from ..backends.base import Runner, RunnerOptions, load_backend_modules, make_runner
from .spec import ModelMeta, ModelSpec
from .weights import extract_state_dict, load_published, safe_load
from .zoo import get_spec, is_zoo_name


@dataclass
class Classifier:
    """A loaded model: metadata, a runner that computes logits, and the torch module if any."""

    meta: ModelMeta
    runner: Runner
    module: nn.Module | None = None

    @property
    def transform(self) -> Callable[[Any], torch.Tensor]:
        return self.meta.preprocessing.transform()

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        return self.runner(batch)

    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.runner(batch).float(), dim=1)


# An artifact loader: (path, backend, options) -> Classifier. Registered by suffix.
ArtifactLoader = Callable[[Path, str | None, RunnerOptions], Classifier]
_ARTIFACT_LOADERS: dict[str, ArtifactLoader] = {}


def register_artifact_loader(suffixes: tuple[str, ...], loader: ArtifactLoader) -> None:
    for suffix in suffixes:
        if suffix in _ARTIFACT_LOADERS:
            raise ValueError(f"artifact suffix {suffix!r} already has a loader")
        _ARTIFACT_LOADERS[suffix] = loader


def load_weights_into(module: nn.Module, state: dict[str, torch.Tensor], *, head: str | None = None) -> list[str]:
    """Load ``state`` strictly; with ``head`` given, head weights of another shape are dropped.

    Returns the names of the dropped keys (timm's behaviour for a new number of classes).
    """
    dropped: list[str] = []
    if head:
        own = module.state_dict()
        dropped = [k for k in state if k.startswith(head + ".") and k in own and own[k].shape != state[k].shape]
        state = {k: v for k, v in state.items() if k not in dropped}
    result = module.load_state_dict(state, strict=not dropped)
    if dropped and (result.unexpected_keys or set(result.missing_keys) - set(dropped)):
        raise WeightsError(f"Weights do not fit the architecture: missing {result.missing_keys}, unexpected {result.unexpected_keys}.")
    return dropped


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
    weights: str | None = None,
    pretrained: bool = True,
    backend: str | None = None,
    options: RunnerOptions | None = None,
    progress: bool | None = None,
) -> Classifier:
    """Load a model reference: a zoo name (with published, chosen or no weights) or an artifact path.

    ``weights`` is a weights tag of the zoo model (e.g. ``IMAGENET1K_V2``) or a checkpoint
    file; ``pretrained=False`` gives random weights (enough to measure cost). ``backend``
    and ``options`` (precision, batch-size hint...) choose how the model runs; ``backend=None``
    runs it with its own runtime: eager PyTorch, ONNX Runtime for ``.onnx``, OpenVINO for ``.xml``.
    """
    ref = str(ref)
    options = options or RunnerOptions()
    if is_zoo_name(ref):
        spec = get_spec(ref)
        module, meta = _zoo_module(spec, weights, pretrained, progress)
        return Classifier(meta, make_runner(module, meta, backend, options), module)
    path = Path(ref)
    if path.exists():
        if weights:
            raise UnknownModelError(f"--weights only applies to zoo models; {ref} already carries its weights.")
        load_backend_modules()  # backends register the file types they read
        if path.is_dir():  # a Hugging Face transformers-format folder
            from ..interop.hf import load_folder

            return load_folder(path, backend, options)
        loader = _ARTIFACT_LOADERS.get(path.suffix.lower())
        if loader is None:
            known = ", ".join(sorted(_ARTIFACT_LOADERS))
            raise UnknownModelError(f"{ref} is not a model file resnetkit can read (known suffixes: {known}).")
        return loader(path, backend, options)
    get_spec(ref)  # raises UnknownModelError with suggestions
    raise AssertionError("unreachable")


def _zoo_module(spec: ModelSpec, weights: str | None, pretrained: bool, progress: bool | None) -> tuple[nn.Module, ModelMeta]:
    module = spec.build()
    if weights and not any(w.tag.upper() == weights.upper() for w in spec.weights) and weights.upper() != "DEFAULT":
        path = Path(weights)
        if not path.is_file():
            tags = ", ".join(w.tag for w in spec.weights)
            raise WeightsError(f"--weights '{weights}' is neither a weights tag of {spec.name} ({tags}) nor an existing file.")
        _load_file_weights(spec, module, path)
        return module.eval(), spec.meta().replace(weights=str(path))
    chosen = spec.get_weights(weights)
    if not pretrained:
        return module.eval(), spec.meta(chosen).replace(weights="random")
    module.load_state_dict(load_published(spec.name, chosen, progress=progress))
    return module.eval(), spec.meta(chosen)
