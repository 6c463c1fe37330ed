"""The image pipeline: bytes or file -> checked, oriented RGB PIL image -> model tensor.

One pipeline serves classify, evaluate, training and the HTTP service, so every entry
point accepts the same inputs and refuses the same bad ones with the same messages.

:func:`prepare_image` is the fast path from bytes or file to model tensor: a JPEG much larger
than the model's input is decoded at 1/2, 1/4 or 1/8 scale by libjpeg (Pillow's draft mode),
resize and center crop are one Pillow call on 8-bit pixels covering only the crop, and the
float conversion and normalization are one numpy step on the small crop (single-threaded, so
decode workers never wait for torch's intra-op threads, which inference uses). Its tensors stay
within a stated tolerance of ``decode_image`` + ``Preprocessing.transform()`` (measured by
``benchmarks/image_pipeline.py``; see docs/serve.md).
"""

from __future__ import annotations

import io
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

if TYPE_CHECKING:
    from .spec import Preprocessing

# A JPEG is decoded at reduced scale only while its shorter side stays at least DRAFT_MARGIN times the
# model's resize size, so the antialiased resize that follows still averages >= 4x4 pixels per output
# pixel. With 2 instead of 4, CIFAR test images upscaled to 160 px lost 1.3 points of top-1 accuracy
# (79.00 % -> 77.70 %, benchmarks/image_pipeline.py); with 4 they keep it (docs/serve.md).
DRAFT_MARGIN = 4.0
# what a folder walk takes (a file named on its own is tried whatever its name): Pillow's names for the formats
# photos come in; an AVIF on a Pillow without AVIF support (before 11.2) becomes an error row, not a silent skip
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                    ".avif", ".ppm", ".pgm")
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".flv",
                  ".wmv", ".3gp", ".ogv")  # what 'classify' reads as videos, frame by frame
DEFAULT_MAX_PIXELS = 50_000_000  # refuse larger images (decompression bombs); ~7000 x 7000


def decode_image(
    source: bytes | str | os.PathLike[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    allow_multi_frame: bool = True,
    min_size: int | None = None,
) -> Image.Image:
    """Decode ``source`` (file path or encoded bytes) into an RGB image.

    Applies the EXIF orientation, converts any mode (RGBA, LA, P, L, I;16, CMYK...) to
    8-bit RGB, and refuses empty, truncated, oversized or (optionally) multi-frame input
    with an :class:`ImageError`. Multi-frame files are otherwise read at their first frame.
    With ``min_size``, a JPEG may be decoded at reduced scale (1/2, 1/4, 1/8) as long as its
    shorter side stays at least ``min_size`` pixels.
    """
    what = "the uploaded data" if isinstance(source, (bytes, bytearray)) else str(source)
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageError("The image is empty (0 bytes).")
        stream: io.BytesIO | str | os.PathLike[str] = io.BytesIO(source)
    else:
        if not Path(source).is_file():
            raise ImageError(f"{source} is not a regular file (a device, a pipe?)" if Path(source).exists()
                             else f"No such file: {source}")
        if Path(source).stat().st_size == 0:
            raise ImageError(f"{source} is empty (0 bytes).")
        stream = source
    try:
        with Image.open(stream) as image:
            _check_geometry(image, what, max_pixels, allow_multi_frame)
            if min_size is not None and image.format == "JPEG":
                _draft(image, min_size)
            ImageOps.exif_transpose(image, in_place=True)  # loads the pixels
            # an Image on the same pixels, which closing ``image`` leaves alive: Pillow's own ``_new``, since
            # ``exif_transpose`` without ``in_place`` copies every pixel even when there is nothing to turn
            # (0.47 of the 3.8 ms that a 500x375 photo took to prepare)
            return to_rgb(image._new(image.im))
    except ImageError:
        raise
    except UnidentifiedImageError:
        if not isinstance(source, (bytes, bytearray)) and Path(source).suffix.lower() in VIDEO_SUFFIXES:
            raise ImageError(f"{what} is a video, not an image: 'resnetkit classify' (classify_video in Python) "
                             "classifies videos frame by frame.") from None
        raise ImageError(f"{what} is not an image format that can be read (JPEG, PNG, BMP, GIF, TIFF, WebP...).") from None
    except Image.DecompressionBombError as exc:  # above twice Pillow's own limit, which --max-pixels cannot raise
        raise ImageError(f"{what} is too large to decode safely: {exc} (Pillow's limit; a larger --max-pixels does "
                         "not lift it). Downscale it first.") from None
    except Exception as exc:  # noqa: BLE001 - Pillow's format plugins raise many kinds on damaged files
        # (OSError, ValueError, SyntaxError, and also IndexError from QOI, NotImplementedError from DDS...)
        raise ImageError(f"{what} could not be decoded: {exc}. The file may be truncated or corrupted.") from None


def _draft(image: Image.Image, min_size: int) -> None:
    """Let libjpeg decode at the smallest 1/2^n scale that keeps the shorter side >= ``min_size``."""
    width, height = image.size
    scale = min(width, height) / min_size
    if scale >= 2:
        image.draft("RGB", (int(np.ceil(width / scale)), int(np.ceil(height / scale))))


def prepare_image(
    source: bytes | str | os.PathLike[str],
    preprocessing: "Preprocessing",
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    allow_multi_frame: bool = True,
) -> torch.Tensor:
    """``source`` as the model's normalized float32 CHW input tensor, by the fast path (module docstring).

    Refuses the same inputs as :func:`decode_image`, with the same messages.
    """
    image = decode_image(source, max_pixels=max_pixels, allow_multi_frame=allow_multi_frame,
                         min_size=int(DRAFT_MARGIN * preprocessing.resize_size))
    return to_model_input(image, preprocessing)


def to_model_input(image: Image.Image, preprocessing: "Preprocessing") -> torch.Tensor:
    """Resize (shorter side), center-crop, scale and normalize an RGB image, as ``preprocessing.transform()``.

    The resize covers only the crop's source region (same sampling positions and filter support
    as resizing the whole image, then cropping), on 8-bit pixels.
    """
    crop, size = preprocessing.crop_size, preprocessing.resize_size
    width, height = image.size
    short, long = min(width, height), max(width, height)
    resized_long = int(size * long / short)
    new_w, new_h = (size, resized_long) if width <= height else (resized_long, size)
    if crop > min(new_w, new_h):  # the crop would need padding: the reference transform handles it
        return preprocessing.transform()(image)
    top, left = int(round((new_h - crop) / 2.0)), int(round((new_w - crop) / 2.0))
    sx, sy = width / new_w, height / new_h
    box = (left * sx, top * sy, (left + crop) * sx, (top + crop) * sy)
    resample = Image.Resampling[preprocessing.interpolation.upper()]
    pixels = np.asarray(image.resize((crop, crop), resample, box=box))
    # numpy, not torch: torch would spread these small steps over its intra-op threads, which the
    # forward passes use; on a busy machine waiting for them costs more than the work itself. Written
    # into one CHW array, in place: 0.08 ms instead of 0.38 ms at 224x224 with temporaries and a copy.
    mean = np.asarray(preprocessing.mean, dtype=np.float32)[:, None, None] * 255.0
    inv_std = 1.0 / (np.asarray(preprocessing.std, dtype=np.float32)[:, None, None] * 255.0)
    chw = np.empty((3, crop, crop), dtype=np.float32)
    np.subtract(pixels.transpose(2, 0, 1), mean, out=chw)
    chw *= inv_std
    return torch.from_numpy(chw)


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


def images_under(folder: Path) -> list[Path]:
    """The image files anywhere under ``folder``, sorted; hidden files and whatever lies in hidden folders
    (.thumbnails, .ipynb_checkpoints, .git) are not data."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p)
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


ImagePaths = str | os.PathLike[str] | Iterable[str | os.PathLike[str]]  # one image file or folder, or several


def iter_image_paths(paths: ImagePaths) -> Iterator[Path]:
    """Expand ``paths`` (one path, or several): folders are walked (image extensions only, sorted); files as
    given. Anything but a path is an :class:`ImageError` that says what to pass."""
    for given in [paths] if isinstance(paths, (str, os.PathLike)) else paths:  # a str is no list of one-letter paths
        if not isinstance(given, (str, os.PathLike)):
            raise ImageError(f"Expected image file or folder paths, got a {type(given).__name__}; classify images "
                             "already in memory (PIL images, arrays, tensors, bytes) with classify_images().")
        if str(given).lower().startswith(("http://", "https://")):
            raise ImageError(f"{given} is a URL: resnetkit reads image files, not URLs; download it first.")
        if not str(given):  # Path("") would be the current folder
            raise ImageError("An empty path was given (an unset shell variable?); name image files or folders.")
        entry = Path(given)
        if entry.is_dir():
            yield from images_under(entry)
        else:
            yield entry


Prepared = torch.Tensor | ImageError  # a model input, or why the file was refused


def iter_prepared(sources: Iterable[str], prepare: Callable[[str], torch.Tensor], *, batch_size: int = 16,
                  workers: int = 2) -> Iterator[tuple[list[str], list[Prepared]]]:
    """``sources`` in batches of ``batch_size``, each with its prepared tensors (or the :class:`ImageError` of an
    unreadable file), in input order. ``workers`` threads decode the next batch while the caller works on
    this one (PIL releases the GIL); memory stays bounded whatever the number of sources."""
    def attempt(source: str) -> Prepared:
        try:
            return prepare(source)
        except ImageError as exc:
            return exc

    def submit(chunk: list[str]) -> tuple[list[str], list[Future[Prepared]]] | None:
        return (chunk, [pool.submit(attempt, source) for source in chunk]) if chunk else None

    remaining = iter(sources)
    chunks = iter(lambda: list(islice(remaining, batch_size)), [])  # lists of batch_size until exhausted
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending = submit(next(chunks, []))
        while pending:
            chunk, futures = pending
            pending = submit(next(chunks, []))  # decoded while the caller handles this batch
            yield chunk, [future.result() for future in futures]


def in_memory_image(image: Any) -> Image.Image:
    """An image held in memory as an 8-bit RGB picture: a PIL image, an encoded file's bytes (checked as files
    are), a uint8 array (H x W, or H x W x C with 1, 3 or 4 channels, as numpy and OpenCV hold pictures; OpenCV's
    are BGR: convert them first) or a uint8 tensor (C x H x W, as torchvision.io reads them)."""
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, (bytes, bytearray)):
        return decode_image(image)
    if isinstance(image, torch.Tensor) and image.dtype == torch.uint8 and image.dim() == 3:
        image = image.permute(1, 2, 0).numpy(force=True)
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and (image.ndim == 2 or (
            image.ndim == 3 and image.shape[2] in (1, 3, 4))):
        return to_rgb(Image.fromarray(image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image))
    shape = f" of shape {tuple(image.shape)} and dtype {image.dtype}" if hasattr(image, "shape") else ""
    raise ImageError(f"Cannot read a {type(image).__name__}{shape} as an image: give a PIL image, an image file's "
                     "bytes, a uint8 array (H x W x 3) or a uint8 tensor (3 x H x W). A float tensor already "
                     "preprocessed for the model goes to Classifier.probabilities(batch) instead.")


def stack_inputs(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.stack(tensors)`` of CPU tensors, copied by numpy on the calling thread.

    torch spreads a copy this size over its intra-op threads, whose OpenMP workers then spin for a
    while; an OpenVINO or ONNX Runtime forward pass that starts meanwhile shares the cores with them
    (resnet18 on OpenVINO at batch 1: 13.1 ms after a torch.stack against 9.3 ms, 2-core Zen 4)."""
    if any(tensor.device.type != "cpu" for tensor in tensors):
        return torch.stack(list(tensors))
    return torch.from_numpy(np.stack([tensor.numpy() for tensor in tensors]))


@dataclass
class PreparedBatch:
    """One batch of sources: the readable ones' tensors stacked (``images``, in source order) and, per source,
    the :class:`ImageError` that refused it or None."""

    sources: list[str]
    images: torch.Tensor
    errors: list[ImageError | None]

    @property
    def readable(self) -> list[int]:
        """Positions in ``sources`` of the rows of ``images``."""
        return [i for i, error in enumerate(self.errors) if error is None]

    def pin_memory(self) -> "PreparedBatch":
        """Page-locked ``images``, which a GPU copies without blocking (DataLoader calls this)."""
        return PreparedBatch(self.sources, self.images.pin_memory(), self.errors)

    @classmethod
    def collate(cls, items: Sequence[tuple[str, Prepared]]) -> "PreparedBatch":
        good = [tensor for _, tensor in items if isinstance(tensor, torch.Tensor)]
        errors = [None if isinstance(tensor, torch.Tensor) else tensor for _, tensor in items]
        images = stack_inputs(good) if good else torch.empty(0)
        return cls([source for source, _ in items], images, errors)


class _Sources(torch.utils.data.Dataset):
    """Sources prepared on access (in a DataLoader worker process): the tensor, or the ImageError that refused it."""

    def __init__(self, sources: Sequence[str], prepare: Callable[[str], torch.Tensor]) -> None:
        self.sources, self.prepare = list(sources), prepare

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> tuple[str, Prepared]:
        source = self.sources[index]
        try:
            return source, self.prepare(source)
        except ImageError as exc:
            return source, exc


def iter_prepared_batches(sources: Iterable[str], prepare: Callable[[str], torch.Tensor], *, batch_size: int = 16,
                          workers: int = 2, processes: bool = False, pin_memory: bool = False
                          ) -> Iterator[PreparedBatch]:
    """``sources`` as :class:`PreparedBatch` es of ``batch_size``, in input order, decoded ahead of the caller.

    Threads by default (``workers`` of them; PIL releases the GIL), which leave the cores' time to the CPU
    inference they share the machine with. With ``processes`` (for a GPU, which decoding must keep fed),
    a DataLoader of ``workers`` processes decodes (``prepare`` must then be picklable, e.g. a partial of
    :func:`prepare_image`), and with ``pin_memory`` the batches arrive in page-locked memory."""
    if processes and workers > 0:
        dataset = _Sources(list(sources), prepare)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                             collate_fn=PreparedBatch.collate, pin_memory=pin_memory,
                                             prefetch_factor=4)
        yield from loader
        return
    for chunk, prepared in iter_prepared(sources, prepare, batch_size=batch_size, workers=workers):
        batch = PreparedBatch.collate(list(zip(chunk, prepared)))
        yield batch.pin_memory() if pin_memory and len(batch.images) else batch
