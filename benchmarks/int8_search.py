"""Which NNCF settings keep OpenVINO int8 within 0.5 points of fp32 on CIFAR ResNets.

    .venv/bin/python benchmarks/int8_search.py [--models cifar_resnet20,cifar_resnet32] [--configs a,b]

Real akamaster weights, all test images of ../shared/data/cifar10/test. Calibration (and the
accuracy-control validation set) come from the TRAIN folder only: the first --calib-size
images of the same fixed shuffle `resnetkit quantize --calib` uses, validation the next
--validation-size. Every configuration is quantized from the same fp32 OpenVINO model, run
as deployed (OpenVINO picks the float precision of the non-int8 layers: bf16 on this CPU)
and compared with fp32 eager: top-1, change in points, top-1 agreement, quantization time.
ONNX Runtime QDQ (the other int8 path) is a reference row. Prints a table and writes
results/int8_search.json.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from resnetkit import load_model
from resnetkit.backends import onnxruntime as onnx_backend
from resnetkit.backends import openvino as openvino_backend
from resnetkit.backends.common import cpu_has_vnni
from resnetkit.core.datasets import labelled_samples, match_folders_to_categories
from resnetkit.core.images import decode_image, iter_image_paths
from resnetkit.core.spec import ModelMeta

from optimize_fidelity import CHECKPOINTS, import_weights, write_json  # same folder

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
ALLOWED_LOSS = 0.5
# Every row starts from NNCF's own defaults (histogram ranges, batches of 16 as `quantize` feeds
# them); "exact-bias-correction" is what openvino.quantize_static uses by default since this search.
NNCF_DEFAULTS: dict[str, Any] = {"method": "histogram", "fast_bias_correction": True}
# name -> keyword arguments of openvino.quantize_static ("calib_size", "calib_seed" and "validation"
# are read here)
CONFIGS: dict[str, dict[str, Any]] = {
    "nncf-defaults": {},
    "per-image": {"per_image": True},
    "no-overflow-fix": {"overflow_fix": "disable"},
    "exact-bias-correction": {"fast_bias_correction": False},
    "mixed-preset": {"preset": "mixed"},
    "ignore-first-last": {"ignore_first_last": True},
    "percentile": {"method": "percentile"},
    "minmax": {"method": "minmax"},
    "smooth-quant-0.15": {"smooth_quant_alpha": 0.15},
    "calib-1000": {"calib_size": 1000},
    "other-calib-images": {"calib_seed": 1},
    "accuracy-control": {"validation": True},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(CHECKPOINTS))
    parser.add_argument("--configs", default=",".join([*CONFIGS, "onnxruntime-qdq"]),
                        help="comma-separated names; a+b combines configurations")
    parser.add_argument("--weights-dir", default=str(SHARED / "weights" / "cifar10"))
    parser.add_argument("--test", default=str(SHARED / "data" / "cifar10" / "test"))
    parser.add_argument("--train", default=str(SHARED / "data" / "cifar10" / "train"))
    parser.add_argument("--calib-size", type=int, default=300)
    parser.add_argument("--validation-size", type=int, default=1000)
    parser.add_argument("--test-limit", type=int, default=None, help="a fixed random N test images (default: all)")
    parser.add_argument("--output", default="results/int8_search.json")
    return parser.parse_args(argv)


def labelled_tensors(paths: list[Path], meta: ModelMeta) -> tuple[torch.Tensor, torch.Tensor]:
    """Preprocessed images of ``paths`` and their labels (from the class folder names)."""
    transform = meta.preprocessing.transform()
    mapping = match_folders_to_categories(sorted({p.parent.name for p in paths}), meta.categories)
    images = torch.stack([transform(decode_image(p)) for p in paths])
    return images, torch.tensor([mapping[p.parent.name] for p in paths])


def train_split(train: str, calib_size: int, validation_size: int, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """Calibration paths (seed 0: the shuffle and order of `quantize --calib`) and the next ones for validation."""
    paths = list(iter_image_paths([Path(train)]))
    random.Random(seed).shuffle(paths)
    return paths[:calib_size], paths[calib_size:calib_size + validation_size]


def batched(images: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [images[i:i + size] for i in range(0, len(images), size)]


def predictions(runner: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    return torch.cat([runner(batch).argmax(1) for batch in batched(images, 100)])


def quantizer(name: str, module: torch.nn.Module, meta: ModelMeta, args: argparse.Namespace,
              validation: tuple[torch.Tensor, torch.Tensor]) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
    """Quantize ``module`` with configuration ``name`` (``a+b`` merges); the runner and calibration count."""
    settings = dict(NNCF_DEFAULTS)
    for part in name.split("+"):
        settings.update(CONFIGS.get(part, {}))
    calib_size = settings.pop("calib_size", args.calib_size)
    calib_paths, _ = train_split(args.train, calib_size, 0, settings.pop("calib_seed", 0))
    calibration = batched(labelled_tensors(calib_paths, meta)[0], 16)
    if name == "onnxruntime-qdq":
        model = onnx_backend.quantize_static(onnx_backend.to_onnx(module, meta), calibration)
        return onnx_backend.OnnxRuntimeRunner(model, "int8"), calib_size
    if settings.pop("validation", False):
        settings["validation"] = list(zip(batched(validation[0], 50), batched(validation[1], 50)))
    model = openvino_backend.quantize_static(openvino_backend.to_openvino(module, meta), calibration, **settings)
    return openvino_backend.OpenVinoRunner(model), calib_size


def search_model(model: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """fp32 eager once, then every configuration on the same test tensors."""
    source = load_model(model)
    meta = source.meta
    _, samples = labelled_samples(args.test, meta.categories)
    if args.test_limit:
        samples = sorted(random.Random(0).sample(samples, args.test_limit), key=lambda s: str(s.path))
    test_images, test_labels = labelled_tensors([s.path for s in samples], meta)
    _, validation_paths = train_split(args.train, args.calib_size, args.validation_size)
    validation = labelled_tensors(validation_paths, meta)
    reference = predictions(source.logits, test_images)
    fp32_top1 = 100.0 * float((reference == test_labels).float().mean())
    print(f"{model}: fp32 eager top-1 {fp32_top1:.2f} % on {len(samples)} test images", flush=True)
    rows = []
    for name in args.configs.split(","):
        start = time.perf_counter()
        runner, calib_size = quantizer(name, source.module, meta, args, validation)
        seconds = time.perf_counter() - start
        predicted = predictions(runner, test_images)
        top1 = 100.0 * float((predicted == test_labels).float().mean())
        row = {"model": model, "config": name, "settings": {p: CONFIGS.get(p, {}) for p in name.split("+")},
               "ran_at": runner.precision, "calibration_images": calib_size,
               "validation_images": args.validation_size if "accuracy-control" in name else 0,
               "test_images": len(samples), "fp32_top1": fp32_top1, "top1": top1, "delta_points": top1 - fp32_top1,
               "agreement": 100.0 * float((predicted == reference).float().mean()),
               "quantize_seconds": seconds, "holds": top1 - fp32_top1 >= -ALLOWED_LOSS}
        rows.append(row)
        print(f"  {name:40} top-1 {top1:6.2f} ({row['delta_points']:+.2f})  agree {row['agreement']:6.2f} %  "
              f"calib {calib_size:5}  {seconds:6.1f} s  {'ok' if row['holds'] else 'FAILS'}", flush=True)
    return rows


def main(args: argparse.Namespace) -> dict[str, Any]:
    import_weights(args.weights_dir)
    load_before = os.getloadavg()[0]
    rows = [row for model in args.models.split(",") for row in search_model(model, args)]
    result = {"test": args.test, "train": args.train, "cpu_has_vnni": cpu_has_vnni(),
              "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]}, "rows": rows}
    print(f"load average (1 min) before/after: {load_before:.1f} / {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    write_json(args.output, result)
    return result


if __name__ == "__main__":
    os.environ.setdefault("RESNETKIT_OFFLINE", "1")
    main(parse_args(sys.argv[1:]))
