"""Hugging Face transformers-format ResNet folders <-> torchvision ResNets.

A folder written by ``save_pretrained`` (``config.json`` with ``model_type: resnet``,
``model.safetensors`` or ``pytorch_model.bin``, ``preprocessor_config.json``) holds the same
network as torchvision's ResNet-18/34/50/101/152 when the config says so (64-channel stem,
stride in the 3x3 convolution, relu): only the parameter names differ
(``transformers/models/resnet/modeling_resnet.py``). Loading renames the parameters, takes the
labels from ``id2label`` and the preprocessing from the image-processor config; exporting does
the reverse (a folder of random weights says so in its safetensors metadata, read back as
``weights: random``). transformers itself is not needed for either; reading or writing
``.safetensors`` needs the ``safetensors`` package (``pip install 'resnetkit[hf]'``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.errors import UnknownModelError, WeightsError
from ..core.fileio import atomic_write, write_text_atomic
from ..core.spec import RANDOM_WEIGHTS, ModelMeta, Preprocessing
from ..core.weights import load_state_file
from ..core.zoo import get_spec

CONFIG = "config.json"
PROCESSOR = "preprocessor_config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH_BIN = "pytorch_model.bin"
# in the metadata of a model.safetensors written by resnetkit: "random" for random weights. Kept with the weights, not
# in config.json, so that weights trained later and saved by transformers (which keeps unknown config keys) drop it.
WEIGHTS_METADATA = "resnetkit_weights"

# (layer_type, depths) of transformers' ResNetConfig -> the torchvision ResNet in the zoo
ARCHS = {
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
    ("bottleneck", (3, 4, 23, 3)): "resnet101",
    ("bottleneck", (3, 8, 36, 3)): "resnet152",
}
_WIDTHS = (64, 128, 256, 512)
_EXPANSION = {"basic": 1, "bottleneck": 4}

# transformers module path -> torchvision module path (outside the residual stages)
_TOP = {
    "resnet.embedder.embedder.convolution": "conv1",
    "resnet.embedder.embedder.normalization": "bn1",
    "classifier.1": "fc",
}
# inside one residual block: transformers -> torchvision
_BLOCK = {
    "shortcut.convolution": "downsample.0",
    "shortcut.normalization": "downsample.1",
    **{f"layer.{i}.convolution": f"conv{i + 1}" for i in range(3)},
    **{f"layer.{i}.normalization": f"bn{i + 1}" for i in range(3)},
}
_HF_BLOCK = re.compile(r"resnet\.encoder\.stages\.(\d+)\.layers\.(\d+)\.(.+)")
_TV_BLOCK = re.compile(r"layer(\d+)\.(\d+)\.(.+)")

# PIL's resampling numbers (transformers' "resample") <-> torchvision InterpolationMode values
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
# ConvNextImageProcessor's defaults (what microsoft/resnet-* use) for fields a config leaves out
_DEFAULT_CROP_PCT = 224 / 256
_DEFAULT_MEAN_STD = (0.5, 0.5, 0.5)  # transformers' IMAGENET_STANDARD_MEAN / _STD


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG).is_file()


def _rename(key: str, top: dict[str, str], block: dict[str, str], pattern: re.Pattern[str], stage_offset: int,
            stage_format: str) -> str:
    module, _, param = key.rpartition(".")
    if module in top:
        return f"{top[module]}.{param}"
    match = pattern.fullmatch(module)
    if match and match.group(3) in block:
        stage, index, part = match.groups()
        return f"{stage_format.format(int(stage) + stage_offset, index)}.{block[part]}.{param}"
    raise WeightsError(f"Unexpected parameter '{key}': not part of a torchvision-compatible ResNet.")


def hf_to_torchvision(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers ``ResNetForImageClassification`` parameter names -> torchvision ``ResNet`` names."""
    return {_rename(k, _TOP, _BLOCK, _HF_BLOCK, 1, "layer{}.{}"): v for k, v in state.items()}


def torchvision_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision ``ResNet`` parameter names -> transformers ``ResNetForImageClassification`` names."""
    top = {v: k for k, v in _TOP.items()}
    block = {v: k for k, v in _BLOCK.items()}
    return {_rename(k, top, block, _TV_BLOCK, -1, "resnet.encoder.stages.{}.layers.{}"): v for k, v in state.items()}


def zoo_arch(config: dict[str, Any], where: str) -> str:
    """The zoo ResNet that a transformers ``ResNetConfig`` describes, or a clear error."""
    if config.get("model_type") != "resnet":
        raise UnknownModelError(f"{where}: model_type is '{config.get('model_type')}'; resnetkit reads transformers "
                                "folders of ResNets (model_type 'resnet') only.")
    layer_type = config.get("layer_type", "bottleneck")
    depths = tuple(config.get("depths", (3, 4, 6, 3)))
    widths = tuple(w * _EXPANSION.get(layer_type, 0) for w in _WIDTHS)
    differences = {
        "embedding_size": (config.get("embedding_size", 64), 64),
        "num_channels": (config.get("num_channels", 3), 3),
        "hidden_act": (config.get("hidden_act", "relu"), "relu"),
        "hidden_sizes": (tuple(config.get("hidden_sizes", (256, 512, 1024, 2048))), widths),
        "downsample_in_first_stage": (config.get("downsample_in_first_stage", False), False),
        "downsample_in_bottleneck": (config.get("downsample_in_bottleneck", False), False),
    }
    wrong = [f"{name}={have!r} (torchvision: {want!r})" for name, (have, want) in differences.items() if have != want]
    arch = ARCHS.get((layer_type, depths))
    if wrong or arch is None:
        detail = ", ".join(wrong) or f"layer_type={layer_type!r} with depths={list(depths)}"
        raise UnknownModelError(f"{where} is a ResNet that no torchvision ResNet matches ({detail}); resnetkit maps "
                                "ResNet-18/34/50/101/152 as in microsoft/resnet-*.")
    return arch


def preprocessing_from_processor(config: dict[str, Any], where: str) -> Preprocessing:
    """resnetkit preprocessing equal to a transformers image-processor config.

    ConvNext-style configs (``size.shortest_edge`` below 384 with ``crop_pct``, as in
    microsoft/resnet-*) resize the shorter side to ``shortest_edge / crop_pct`` and center-crop;
    configs with ``crop_size`` resize to ``shortest_edge`` and crop to ``crop_size``. transformers
    squashes to a square when ``shortest_edge`` is 384 or more or ``size`` is height x width;
    resnetkit then resizes the shorter side and center-crops (the same for square images).
    """
    if float(config.get("rescale_factor", 1 / 255)) != 1 / 255 or config.get("do_rescale") is False:
        raise UnknownModelError(f"{where}: only rescale_factor 1/255 is supported.")
    size = config.get("size") or {"shortest_edge": 224}
    edge = int(size.get("shortest_edge") or size.get("height") or 224)
    crop = config.get("crop_size") if config.get("do_center_crop") else None
    if crop:
        resize, crop_size = edge, int(crop.get("height") or crop.get("shortest_edge") or edge)
    elif "shortest_edge" in size and edge < 384:
        resize, crop_size = int(edge / float(config.get("crop_pct") or _DEFAULT_CROP_PCT)), edge
    else:
        resize = crop_size = edge
    normalize = config.get("do_normalize", True)
    return Preprocessing(
        crop_size=crop_size,
        resize_size=resize,
        mean=tuple(config.get("image_mean", _DEFAULT_MEAN_STD)) if normalize else (0.0, 0.0, 0.0),  # type: ignore[arg-type]
        std=tuple(config.get("image_std", _DEFAULT_MEAN_STD)) if normalize else (1.0, 1.0, 1.0),  # type: ignore[arg-type]
        interpolation=_RESAMPLE.get(int(config.get("resample", 3)), "bicubic"),
    )


def processor_config(preprocessing: Preprocessing) -> dict[str, Any]:
    """A ConvNext image-processor config (what AutoImageProcessor reads) equal to ``preprocessing``."""
    crop, resize = preprocessing.crop_size, preprocessing.resize_size
    crop_pct = crop / resize
    if int(crop / crop_pct) != resize:  # float rounding: aim at the middle of the integer
        crop_pct = crop / (resize + 0.5)
    resample = {v: k for k, v in _RESAMPLE.items()}[preprocessing.interpolation]
    return {
        "image_processor_type": "ConvNextImageProcessor",
        "do_resize": True, "size": {"shortest_edge": crop}, "crop_pct": crop_pct, "resample": resample,
        "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": list(preprocessing.mean), "image_std": list(preprocessing.std),
    }


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UnknownModelError(f"{path} is not a readable JSON file ({exc}).") from None


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The state dict of a transformers folder: safetensors (single or sharded) or pytorch_model.bin."""
    if (folder / SAFETENSORS).is_file():
        return load_state_file(folder / SAFETENSORS)
    if (folder / SAFETENSORS_INDEX).is_file():
        shards = sorted(set(_read_json(folder / SAFETENSORS_INDEX)["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_state_file(folder / shard).items()}
    if (folder / PYTORCH_BIN).is_file():
        return load_state_file(folder / PYTORCH_BIN)
    raise WeightsError(f"{folder} has a config.json but no weights ({SAFETENSORS} or {PYTORCH_BIN}).")


def _has_random_weights(folder: Path) -> bool:
    """Whether the folder's model.safetensors was written by resnetkit from random weights (see WEIGHTS_METADATA)."""
    if not (folder / SAFETENSORS).is_file():
        return False
    from safetensors import safe_open

    with safe_open(str(folder / SAFETENSORS), framework="pt") as handle:
        return (handle.metadata() or {}).get(WEIGHTS_METADATA) == RANDOM_WEIGHTS


def _labels(config: dict[str, Any], count: int) -> tuple[str, ...]:
    id2label = {int(k): str(v) for k, v in (config.get("id2label") or {}).items()}
    return tuple(id2label.get(i, f"LABEL_{i}") for i in range(count))


def read_folder(folder: Path) -> tuple[nn.Module, ModelMeta]:
    """A transformers-format ResNet folder as the torchvision ResNet (in eval mode) and its metadata."""
    if not is_hf_folder(folder):
        raise UnknownModelError(f"{folder} is a folder without {CONFIG}: not a Hugging Face model folder. Give a "
                                "zoo name, a model file, or a folder written by transformers' save_pretrained.")
    config = _read_json(folder / CONFIG)
    arch = zoo_arch(config, str(folder))
    weights = read_weights(folder)
    if "conv1.weight" in weights or "fc.weight" in weights:
        raise WeightsError(
            f"The weights in {folder} have torchvision parameter names (conv1.weight, fc.weight, ...), not the "
            "transformers (Hugging Face) names a transformers folder holds (resnet.embedder.embedder.convolution."
            f"weight, classifier.1.weight, ...). Load a torchvision checkpoint as weights of the zoo model: "
            f"'--weights FILE' (e.g. 'resnetkit classify {arch} --weights FILE photo.jpg'), or 'resnetkit weights "
            f"import {arch} FILE' for a published file.")
    state = hf_to_torchvision(weights)
    categories = _labels(config, state["fc.weight"].shape[0])
    module = get_spec(arch).build(num_classes=len(categories))
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise WeightsError(f"The weights in {folder} do not fit its config ({arch}): {str(exc).splitlines()[0]}") from None
    if (folder / PROCESSOR).is_file():
        preprocessing = preprocessing_from_processor(_read_json(folder / PROCESSOR), str(folder / PROCESSOR))
    else:
        preprocessing = get_spec(arch).default_weights.preprocessing
    meta = ModelMeta(name=folder.resolve().name, arch=arch, categories=categories, preprocessing=preprocessing,
                     weights=RANDOM_WEIGHTS if _has_random_weights(folder) else str(folder), format="hf")
    return module.eval(), meta


def hf_config(arch: str, categories: tuple[str, ...]) -> dict[str, Any]:
    """The transformers ``config.json`` of the zoo ResNet ``arch`` with ``categories`` as labels."""
    found = [key for key, name in ARCHS.items() if name == arch]
    if not found:
        resnets = ", ".join(ARCHS.values())
        raise UnknownModelError(f"Only torchvision ResNets ({resnets}) can be written in transformers format, not {arch}.")
    layer_type, depths = found[0]
    return {
        "architectures": ["ResNetForImageClassification"], "model_type": "resnet",
        "num_channels": 3, "embedding_size": 64, "hidden_sizes": [w * _EXPANSION[layer_type] for w in _WIDTHS],
        "depths": list(depths), "layer_type": layer_type, "hidden_act": "relu",
        "downsample_in_first_stage": False, "downsample_in_bottleneck": False,
        "id2label": {str(i): label for i, label in enumerate(categories)},
        "label2id": {label: i for i, label in enumerate(categories)},
    }


def save_folder(module: nn.Module, meta: ModelMeta, folder: str | Path) -> Path:
    """Write ``module`` as a transformers folder that ``AutoModelForImageClassification`` loads."""
    try:
        from safetensors.torch import save as to_safetensors
    except ImportError:
        raise WeightsError("Writing a transformers folder needs safetensors: pip install 'resnetkit[hf]'.") from None
    config = hf_config(meta.arch, meta.categories)
    own = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    reference = get_spec(meta.arch).build(num_classes=meta.num_classes).state_dict()
    if own.keys() != reference.keys() or any(v.shape != reference[k].shape for k, v in own.items()):
        raise UnknownModelError(f"{meta.name} is not a plain {meta.arch} (pruned or quantized?); transformers' "
                                "ResNetConfig cannot describe it. Export the model before pruning or quantizing.")
    state = torchvision_to_hf(own)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UnknownModelError(f"{folder} is a file; give a folder name for --format hf.")
    write_text_atomic(folder / CONFIG, json.dumps(config, indent=2) + "\n")
    write_text_atomic(folder / PROCESSOR, json.dumps(processor_config(meta.preprocessing), indent=2) + "\n")
    with atomic_write(folder / SAFETENSORS) as handle:
        flag = {WEIGHTS_METADATA: RANDOM_WEIGHTS} if meta.weights == RANDOM_WEIGHTS else {}
        handle.write(to_safetensors(state, metadata={"format": "pt", **flag}))
    return folder
