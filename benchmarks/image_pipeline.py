"""The fast image pipeline (``prepare_image``) against the reference (``decode_image`` + ``transform()``).

For each image set: the largest and mean absolute difference of the model input (in 0..255 pixel
units, before normalization), how many JPEGs were decoded at reduced scale, top-1 agreement of a
model fed both inputs, and decode+preprocess milliseconds per image of both pipelines, timed from
bytes in memory, one thread, interleaved (reference, fast, fast, reference, ...) over several
rounds; the median round is reported. Then the raw decoders per format (Pillow vs torchvision.io),
which is how the decoder was chosen. Load averages are recorded: the machine may be shared.

Image sets (../shared): CIFAR-10 test JPEGs (32x32, cifar_resnet20 with its real weights if
imported, else random), the same resized to 160x160 and 320x320 (JPEG quality 90; the 320 px ones
are decoded at 1/2 scale, so the real weights check reduced-scale decoding), hymenoptera val
photos (~500x375, resnet18 with random weights: ImageNet weights cannot be downloaded here), and
the same photos resized to 3000 px on their shorter side (~4000x3000, a 12-megapixel phone photo,
decoded at 1/2 scale).

    python benchmarks/image_pipeline.py [--cifar-limit 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image as tv_decode

from resnetkit.choose.bench import environment
from resnetkit.core.errors import ResnetkitError
from resnetkit.core.fileio import write_text_atomic
from resnetkit.core.images import DRAFT_MARGIN, decode_image, prepare_image
from resnetkit.run.loading import Classifier, load_model
from resnetkit.core.zoo import get_spec

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@dataclass
class ImageSet:
    name: str
    model: str
    images: list[bytes]
    labels: list[str]  # the folder names: the true class when the model knows it


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def image_sets(cifar_limit: int, data: Path) -> list[ImageSet]:
    cifar = sorted((data / "cifar10" / "test").rglob("*.jpg"))
    cifar = cifar[:: max(1, len(cifar) // cifar_limit)][:cifar_limit]
    photo_paths = sorted((data / "hymenoptera" / "val").rglob("*.jpg"))
    photos = [p.read_bytes() for p in photo_paths]
    cifar_bytes, cifar_labels = [p.read_bytes() for p in cifar], [p.parent.name for p in cifar]
    photo_labels = [p.parent.name for p in photo_paths]
    return [ImageSet("cifar10 test", "cifar_resnet20", cifar_bytes, cifar_labels),
            ImageSet("cifar10 test, 160 px", "cifar_resnet20", [upscaled(d, 160) for d in cifar_bytes], cifar_labels),
            ImageSet("cifar10 test, 320 px", "cifar_resnet20", [upscaled(d, 320) for d in cifar_bytes], cifar_labels),
            ImageSet("hymenoptera val", "resnet18", photos, photo_labels),
            ImageSet("hymenoptera val, 3000 px photos", "resnet18", [upscaled(p, 3000) for p in photos], photo_labels)]


def upscaled(data: bytes, short_side: int) -> bytes:
    """The photo resized (bicubic) to ``short_side`` pixels on its shorter side, as JPEG quality 90."""
    with Image.open(io.BytesIO(data)) as image:
        scale = short_side / min(image.size)
        big = image.convert("RGB").resize((round(image.width * scale), round(image.height * scale)),
                                          Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    big.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def classifier_for(model: str) -> tuple[Classifier, str]:
    """The CIFAR model with its real weights if they are imported; ImageNet models with random weights."""
    if get_spec(model).meta().preprocessing.crop_size <= 64:
        try:
            return load_model(model), "real"
        except ResnetkitError:
            pass
    torch.manual_seed(0)
    return load_model(model, pretrained=False), "random"


def fidelity(images: list[bytes], labels: list[str], classifier: Classifier) -> dict[str, Any]:
    """Input differences, top-1 agreement, and top-1 accuracy of both pipelines when the labels are classes."""
    pre = classifier.meta.preprocessing
    categories = list(classifier.meta.categories)
    truth = torch.tensor([categories.index(label) if label in categories else -1 for label in labels])
    right = {"reference": 0, "fast": 0}
    transform = pre.transform()
    std = torch.tensor(pre.std).view(3, 1, 1) * 255.0
    max_diff, p999, diffs, agree, drafted = 0.0, 0.0, [], 0, 0
    for start in range(0, len(images), 64):
        chunk = images[start:start + 64]
        reference = torch.stack([transform(decode_image(d)) for d in chunk])
        fast = torch.stack([prepare_image(d, pre) for d in chunk])
        difference = ((reference - fast) * std).abs()
        max_diff = max(max_diff, float(difference.max()))
        p999 = max(p999, float(torch.quantile(difference.flatten()[::max(1, difference.numel() // 8_000_000)], 0.999)))
        diffs.append(float(difference.mean()))
        predicted = {"reference": classifier.logits(reference).argmax(1), "fast": classifier.logits(fast).argmax(1)}
        agree += int((predicted["reference"] == predicted["fast"]).sum())
        for name, top1 in predicted.items():
            right[name] += int((top1 == truth[start:start + 64]).sum())
        drafted += sum(_drafted(d, pre.resize_size) for d in chunk)
    return {"images": len(images), "max_abs_diff_pixels": round(max_diff, 3),
            "p99.9_abs_diff_pixels": round(p999, 3),
            "mean_abs_diff_pixels": round(statistics.fmean(diffs), 4), "top1_agreement": round(agree / len(images), 5),
            "decoded_at_reduced_scale": drafted,
            **({f"top1_accuracy_{name}": round(n / len(images), 5) for name, n in right.items()}
               if bool((truth >= 0).all()) else {})}


def _drafted(data: bytes, resize_size: int) -> bool:
    with Image.open(io.BytesIO(data)) as image:
        return image.format == "JPEG" and min(image.size) >= 2 * DRAFT_MARGIN * resize_size


def per_image_ms(images: list[bytes], variants: dict[str, Callable[[bytes], Any]], rounds: int) -> dict[str, float]:
    """Median over rounds of each variant's mean ms per image; variants alternate order every round."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for round_ in range(rounds):
        for name in names if round_ % 2 == 0 else reversed(names):
            start = time.perf_counter()
            for data in images:
                variants[name](data)
            times[name].append((time.perf_counter() - start) * 1000.0 / len(images))
    return {name: round(statistics.median(values), 4) for name, values in times.items()}


def pipelines(images: list[bytes], classifier: Classifier, rounds: int) -> dict[str, Any]:
    pre = classifier.meta.preprocessing
    transform = pre.transform()
    before = load_average()
    ms = per_image_ms(images, {"reference": lambda d: transform(decode_image(d)),
                               "fast": lambda d: prepare_image(d, pre)}, rounds)
    return {"reference_ms": ms["reference"], "fast_ms": ms["fast"],
            "speedup": round(ms["reference"] / ms["fast"], 2), "load_average": [before, load_average()]}


def decoders(images: list[bytes], rounds: int) -> dict[str, Any]:
    """Raw decode to 8-bit RGB: Pillow vs torchvision.io (libjpeg-turbo / libpng in both)."""
    def pillow(data: bytes) -> Any:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")

    def torchvision(data: bytes) -> Any:
        return tv_decode(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)

    before = load_average()
    ms = per_image_ms(images, {"pillow": pillow, "torchvision.io": torchvision}, rounds)
    return {**{f"{k}_ms": v for k, v in ms.items()}, "load_average": [before, load_average()]}


def as_png(images: list[bytes]) -> list[bytes]:
    out = []
    for data in images:
        buffer = io.BytesIO()
        with Image.open(io.BytesIO(data)) as image:
            image.save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="the ../shared/data folder")
    parser.add_argument("--cifar-limit", type=int, default=2000, help="CIFAR test images used (evenly spaced)")
    parser.add_argument("--timing-images", type=int, default=40, help="images per set in each timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, default=ROOT / "results" / "image_pipeline.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result: dict[str, Any] = {"sets": [], "decoders": {}, "environment": environment(),
                              "torch_threads": 1, "draft_margin": DRAFT_MARGIN}
    print(f"{'image set':<32} {'model (weights)':<24} {'n':>5} {'max diff':>9} {'p99.9':>6} {'mean diff':>9} {'top-1 agree':>11} "
          f"{'reduced':>7} {'ref ms':>8} {'fast ms':>8} {'speedup':>7}  load")
    all_sets = image_sets(args.cifar_limit, args.data)
    for image_set in all_sets:
        classifier, weights = classifier_for(image_set.model)
        row = {"set": image_set.name, "model": image_set.model, "weights": weights,
               **fidelity(image_set.images, image_set.labels, classifier),
               **pipelines(image_set.images[:args.timing_images], classifier, args.rounds)}
        result["sets"].append(row)
        print(f"{row['set']:<32} {row['model'] + ' (' + weights + ')':<24} {row['images']:>5} "
              f"{row['max_abs_diff_pixels']:>9} {row['p99.9_abs_diff_pixels']:>6} {row['mean_abs_diff_pixels']:>9} {100 * row['top1_agreement']:>10.2f}% "
              f"{row['decoded_at_reduced_scale']:>7} {row['reference_ms']:>8} {row['fast_ms']:>8} "
              f"{row['speedup']:>6}x  {row['load_average']}", flush=True)
        if "top1_accuracy_fast" in row:
            print(f"{'':<32} top-1 accuracy: reference {100 * row['top1_accuracy_reference']:.2f} %, "
                  f"fast {100 * row['top1_accuracy_fast']:.2f} %")
    sets = {s.name: s.images[:args.timing_images] for s in all_sets}
    formats = {"JPEG 32x32 (cifar)": sets["cifar10 test"], "JPEG ~500x375 (hymenoptera)": sets["hymenoptera val"],
               "PNG ~500x375 (hymenoptera)": as_png(sets["hymenoptera val"])}
    print(f"\n{'decode only, ms/image':<32} {'pillow':>8} {'torchvision.io':>15}  load")
    for name, images in formats.items():
        row = decoders(images, args.rounds)
        result["decoders"][name] = row
        print(f"{name:<32} {row['pillow_ms']:>8} {row['torchvision.io_ms']:>15}  {row['load_average']}", flush=True)
    write_text_atomic(args.json, json.dumps(result, indent=2) + "\n")
    print(f"written {args.json}")
    return result


if __name__ == "__main__":
    main()
