"""timm checkpoints of zoo architectures, with the preprocessing timm's ``pretrained_cfg`` gives.

timm's ResNets use torchvision's parameter names, so their state dicts load into the zoo
models as they are; what differs is the eval preprocessing each recipe was trained for
(``crop_pct``, ``interpolation``, ``mean``/``std``, ``input_size``). It comes from
``--preprocessing timm:key=value,...`` or from a sidecar next to the weights file (timm's
hub ``config.json`` with a ``pretrained_cfg``, ``pretrained_cfg.json`` or ``<file>.json``),
and follows ``timm.data.transforms_factory.transforms_imagenet_eval`` (crop mode ``center``):
resize the shorter side to ``floor(size / crop_pct)``, center-crop ``size``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from ..core.artifacts import save_artifact
from ..core.errors import WeightsError
from ..core.spec import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, PublishedMetrics
from ..core.weights import load_state_file
from ..core.zoo import get_spec

DEFAULT_CROP_PCT = 0.875  # timm.data.constants.DEFAULT_CROP_PCT
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
_KEYS = ("input_size", "crop_pct", "interpolation", "mean", "std", "crop_mode")
_USAGE = ("Write it as timm:crop_pct=0.95,interpolation=bicubic,mean=0.485,0.456,0.406,std=0.229,0.224,0.225,"
          "input_size=224 (any subset; the others take timm's defaults).")


def parse_preprocessing(text: str) -> dict[str, Any]:
    """``timm:crop_pct=0.95,interpolation=bicubic,mean=0.5,0.5,0.5`` -> a partial pretrained_cfg dict."""
    scheme, _, body = text.partition(":")
    if scheme != "timm":
        raise WeightsError(f"--preprocessing '{text}': only timm's settings are understood. {_USAGE}")
    pairs: list[list[str]] = []
    for token in filter(None, (t.strip() for t in body.split(","))):
        if "=" in token:
            key, _, value = token.partition("=")
            pairs.append([key.strip(), value.strip()])
        elif pairs:  # a further number of a mean/std list
            pairs[-1][1] += f",{token}"
        else:
            raise WeightsError(f"--preprocessing '{text}': '{token}' is not key=value. {_USAGE}")
    unknown = [key for key, _ in pairs if key not in _KEYS]
    if unknown:
        raise WeightsError(f"--preprocessing: unknown setting(s) {', '.join(unknown)} (known: {', '.join(_KEYS)}). {_USAGE}")
    try:
        return {key: _value(key, value) for key, value in pairs}
    except ValueError:
        raise WeightsError(f"--preprocessing '{text}' has a value that is not a number where one is needed. {_USAGE}") from None


def _value(key: str, value: str) -> Any:
    if key == "crop_pct":
        return float(value)
    if key in ("mean", "std"):
        return tuple(float(v) for v in value.split(","))
    if key == "input_size":
        return tuple(int(v) for v in value.split(","))
    return value


def preprocessing_from_cfg(cfg: dict[str, Any]) -> Preprocessing:
    """resnetkit preprocessing equal to timm's eval transform for ``cfg`` (a pretrained_cfg or data config)."""
    size = cfg.get("input_size", 224)
    dims = [int(v) for v in (size if isinstance(size, (tuple, list)) else [size])][-2:]  # (3, H, W), (H, W) or H
    height, width = dims[0], dims[-1]
    crop_pct = float(DEFAULT_CROP_PCT if cfg.get("crop_pct") is None else cfg["crop_pct"])  # 0 is no default
    interpolation = cfg.get("interpolation") or "bilinear"
    mean, std = tuple(cfg.get("mean") or IMAGENET_MEAN), tuple(cfg.get("std") or IMAGENET_STD)
    problems = []
    if min(height, width) < 1:
        problems.append(f"input_size {height}x{width} (a positive number of pixels, e.g. 224)")
    elif height != width:
        problems.append(f"input_size {height}x{width} is not square")
    if (cfg.get("crop_mode") or "center") != "center":
        problems.append(f"crop_mode '{cfg['crop_mode']}' (only 'center')")
    if interpolation not in _INTERPOLATIONS:
        problems.append(f"interpolation '{interpolation}' (one of {', '.join(_INTERPOLATIONS)})")
    if not 0 < crop_pct <= 1:
        problems.append(f"crop_pct {crop_pct:g} (a value in (0, 1], e.g. 0.875)")
    if len(mean) != 3 or len(std) != 3:
        problems.append("mean and std need 3 values")
    if problems:
        raise WeightsError(f"Unsupported timm preprocessing: {'; '.join(problems)}.")
    return Preprocessing(crop_size=height, resize_size=math.floor(height / crop_pct), mean=mean,  # type: ignore[arg-type]
                         std=std, interpolation=interpolation)  # type: ignore[arg-type]


def read_sidecar(weights_file: Path) -> dict[str, Any] | None:
    """timm's pretrained_cfg stored next to ``weights_file``, if any."""
    for candidate in (weights_file.with_suffix(".json"), weights_file.parent / "pretrained_cfg.json",
                      weights_file.parent / "config.json"):
        if not candidate.is_file():
            continue
        try:
            data = json.loads(candidate.read_text())
        except (OSError, ValueError) as exc:
            raise WeightsError(f"{candidate} is not readable JSON ({exc}).") from None
        if isinstance(data, dict) and isinstance(data.get("pretrained_cfg"), dict):
            return {**data["pretrained_cfg"], **({"label_names": data["label_names"]} if "label_names" in data else {})}
        if candidate.name != "config.json" and isinstance(data, dict):
            return data
    return None


def import_checkpoint(model: str, file: str | os.PathLike[str], preprocessing: str | None = None,
                      output: str | os.PathLike[str] | None = None) -> tuple[Path, Preprocessing]:
    """Load timm (or other torchvision-named) weights of zoo ``model`` and save them as a resnetkit artifact.

    The preprocessing is the sidecar's pretrained_cfg with ``preprocessing``'s settings on
    top, or the zoo model's own when neither exists. Returns the artifact path (default:
    ``file`` with suffix ``.pt``) and the preprocessing it carries.
    """
    source = Path(file)
    target = Path(output) if output else source.with_suffix(".pt")
    if target.resolve() == source.resolve():
        raise WeightsError(f"The artifact would overwrite {source}; choose another name with -o FILE.pt.")
    spec = get_spec(model)
    cfg = {**(read_sidecar(source) or {}), **(parse_preprocessing(preprocessing) if preprocessing else {})}
    published = spec.default_weights
    prep = preprocessing_from_cfg(cfg) if cfg else published.preprocessing  # refused before the weights are read
    state = load_state_file(source)
    head = state.get(f"{spec.head}.weight")
    if head is None:
        raise WeightsError(f"{source} has no '{spec.head}.weight': it is not a {model} checkpoint with torchvision/timm names.")
    module = spec.build(num_classes=head.shape[0])
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split()).removeprefix("Error(s) in loading state_dict for ")
        raise WeightsError(f"{source} does not fit {model}: {detail[:400]}. Is it a checkpoint of this architecture?") from None
    categories = (published.categories if head.shape[0] == len(published.categories)
                  else tuple(cfg.get("label_names") or (f"class_{i}" for i in range(head.shape[0]))))
    meta = spec.meta().replace(categories=categories, preprocessing=prep, metrics=PublishedMetrics(),
                               weights=str(source), extra={"imported_from": "timm" if cfg else "checkpoint"})
    save_artifact(target, module.eval(), meta)
    return target, prep
