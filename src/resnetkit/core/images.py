"""The image pipeline: bytes or file -> checked, oriented RGB PIL image -> model tensor.

One pipeline serves classify, evaluate, training and the HTTP service, so every entry
point accepts the same inputs and refuses the same bad ones with the same messages.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
DEFAULT_MAX_PIXELS = 50_000_000  # refuse larger images (decompression bombs); ~7000 x 7000


def decode_image(
    source: bytes | str | os.PathLike[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    allow_multi_frame: bool = True,
) -> Image.Image:
    """Decode ``source`` (file path or encoded bytes) into an RGB image.

    Applies the EXIF orientation, converts any mode (RGBA, LA, P, L, I;16, CMYK...) to
    8-bit RGB, and refuses empty, truncated, oversized or (optionally) multi-frame input
    with an :class:`ImageError`. Multi-frame files are otherwise read at their first frame.
    """
    what = "the uploaded data" if isinstance(source, (bytes, bytearray)) else str(source)
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageError("The image is empty (0 bytes).")
        stream: io.BytesIO | str | os.PathLike[str] = io.BytesIO(source)
    else:
        if not Path(source).is_file():
            raise ImageError(f"No such file: {source}")
        stream = source
    try:
        with Image.open(stream) as image:
            _check_geometry(image, what, max_pixels, allow_multi_frame)
            image.load()
            return to_rgb(ImageOps.exif_transpose(image))
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{what} is not an image format that can be read (JPEG, PNG, BMP, GIF, TIFF, WebP...).") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{what} is too large to decode safely (possible decompression bomb).") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"{what} could not be decoded: {exc}. The file may be truncated or corrupted.") from None


def _check_geometry(image: Image.Image, what: str, max_pixels: int, allow_multi_frame: bool) -> None:
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageError(f"{what} has zero size ({width}x{height}).")
    if width * height > max_pixels:
        raise ImageError(
            f"{what} is {width}x{height} = {width * height:,} pixels, above the limit of {max_pixels:,} "
            "(decompression-bomb protection). Downscale it first."
        )
    frames = getattr(image, "n_frames", 1)
    if frames > 1 and not allow_multi_frame:
        raise ImageError(f"{what} is animated or multi-frame ({frames} frames); send a single still image.")


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB version of ``image``; transparency is composited onto white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        scale = 257.0 if image.mode != "F" else max(float(pixels.max()), 1e-12) / 255.0
        image = Image.fromarray(np.clip(pixels / scale, 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def iter_image_paths(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Expand ``paths``: folders are walked (image extensions only, sorted); files as given."""
    for entry in map(Path, paths):
        if entry.is_dir():
            yield from sorted(p for p in entry.rglob("*") if p.is_file() and is_image_file(p))
        else:
            yield entry
