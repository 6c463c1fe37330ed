"""Inputs made up for measuring, when no real images are at hand: random-pixel images through a model's own
preprocessing, and photo-like JPEGs (smooth gradients plus noise) for timing the decode path."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from .spec import ModelMeta, Preprocessing


def generated_batches(meta: ModelMeta, *, count: int, batch_size: int = 32, seed: int = 0) -> list[torch.Tensor]:
    """``count`` random-pixel images through the model's own preprocessing (no data needed)."""
    rng = np.random.default_rng(seed)
    transform = meta.preprocessing.transform()
    size = meta.preprocessing.resize_size
    tensors = [transform(Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB"))
               for _ in range(count)]
    return [torch.stack(tensors[i:i + batch_size]) for i in range(0, len(tensors), batch_size)]


def synthetic_jpeg(width: int = 640, height: int = 480, seed: int = 0) -> bytes:
    """A photo-like JPEG of ``width`` x ``height`` (smooth gradients plus noise, quality 90)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 200
    pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def typical_upload(preprocessing: Preprocessing) -> bytes:
    """A JPEG the size clients usually send: the input size for tiny models, a 4:3 photo about 2.5x the
    resize size otherwise (640x480 for ImageNet models)."""
    if preprocessing.crop_size <= 64:
        return synthetic_jpeg(preprocessing.resize_size, preprocessing.resize_size)
    return synthetic_jpeg(round(preprocessing.resize_size * 2.5), round(preprocessing.resize_size * 1.875))
