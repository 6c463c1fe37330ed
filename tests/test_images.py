"""The image pipeline accepts every common mode and refuses bad input with clear errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from resnetkit.core.errors import ImageError
from resnetkit.core.images import decode_image, iter_image_paths, prepare_image, stack_inputs, to_rgb
from resnetkit.core.spec import Preprocessing

from conftest import damaged_dds, make_image, png_header_claiming


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "CMYK", "1", "I;16", "I"])
def test_any_mode_becomes_rgb(tmp_path, mode):
    suffix = ".tiff" if mode in ("CMYK", "I") else ".png"
    path = make_image(tmp_path / f"img_{mode.replace(';', '')}{suffix}", mode=mode)
    image = decode_image(path)
    assert image.mode == "RGB" and image.size == (64, 48)
    tensor = Preprocessing(crop_size=32, resize_size=36).transform()(image)
    assert tensor.shape == (3, 32, 32) and tensor.is_contiguous()


def test_16_bit_is_scaled_not_clipped():
    array = np.full((4, 4), 65535 // 2, dtype=np.uint16)  # opens as mode I;16
    image = to_rgb(Image.fromarray(array))
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (127, 127, 127)


def test_transparency_is_composited_on_white():
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert to_rgb(image).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert decode_image(path).size == (20, 40)


def test_bytes_and_paths_give_the_same_image(tmp_path):
    path = make_image(tmp_path / "a.png")
    assert decode_image(path.read_bytes()).tobytes() == decode_image(path).tobytes()


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(ImageError, match="empty"):
        decode_image(b"")
    (tmp_path / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")  # handed to an image command
    with pytest.raises(ImageError, match="clip.mp4 is a video, not an image: 'resnetkit classify'"):
        decode_image(tmp_path / "clip.mp4")
    with pytest.raises(ImageError, match="https://example.com/cat.jpg is a URL: .* download it first"):
        list(iter_image_paths("https://example.com/cat.jpg"))
    (tmp_path / "zero.jpg").touch()
    with pytest.raises(ImageError, match=r"zero.jpg is empty \(0 bytes\)"):  # not "not an image format"
        decode_image(tmp_path / "zero.jpg")
    with pytest.raises(ImageError, match="not an image format"):
        decode_image(b"hello, I am text")
    with pytest.raises(ImageError, match="No such file"):
        decode_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageError, match=r"/dev/null is not a regular file \(a device, a pipe\?\)"):
        decode_image("/dev/null")
    full = make_image(tmp_path / "full.jpg", size=(200, 200)).read_bytes()
    with pytest.raises(ImageError, match="truncated or corrupted"):
        decode_image(full[: len(full) // 2])
    with pytest.raises(ImageError, match="Unknown pixel format flags 65280. The file may be truncated or corrupted"):
        decode_image(damaged_dds())  # Pillow raises NotImplementedError for it, not an OSError


def test_decompression_bomb_is_refused_before_decoding():
    buffer = io.BytesIO()
    Image.new("L", (4000, 4000)).save(buffer, "PNG")  # tiny file, 16 M pixels
    with pytest.raises(ImageError, match="above the limit"):
        decode_image(buffer.getvalue(), max_pixels=1_000_000)
    with pytest.raises(ImageError, match=r"Image size \(10000000000 pixels\) exceeds.*Pillow's limit; a larger "
                                         "--max-pixels does not lift it"):
        decode_image(png_header_claiming(100_000, 100_000), max_pixels=10**11)


def test_multi_frame_policy(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert decode_image(path).getpixel((0, 0)) == (255, 0, 0)  # first frame
    with pytest.raises(ImageError, match="2 frames"):
        decode_image(path, allow_multi_frame=False)


def test_folders_are_walked_for_images_only(tmp_path):
    make_image(tmp_path / "d" / "b.png")
    make_image(tmp_path / "d" / "sub" / "a.jpg")
    for name in ("c.JFIF", "d.jpe"):  # JPEGs as some cameras and browsers name them
        make_image(tmp_path / "d" / "sub" / name, format="JPEG")
    make_image(tmp_path / "d" / ".thumbnails" / "t.png")  # a hidden folder is not data, as a hidden file is not
    make_image(tmp_path / "d" / ".hidden.png")
    (tmp_path / "d" / "notes.txt").write_text("x")
    explicit = tmp_path / "x.dat"
    explicit.write_bytes(b"??")
    found = [p.name for p in iter_image_paths([tmp_path / "d", explicit])]
    assert found == ["b.png", "a.jpg", "c.JFIF", "d.jpe", "x.dat"]


# --- the fast path: prepare_image ---------------------------------------------------------------------

IMAGENET = Preprocessing(crop_size=224, resize_size=256)


def pixel_difference(a: torch.Tensor, b: torch.Tensor, pre: Preprocessing) -> float:
    """Largest difference of two model inputs, in 0..255 pixel units (before normalization)."""
    return float(((a - b) * torch.tensor(pre.std).view(3, 1, 1) * 255).abs().max())


def smooth_photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size[1], 0:size[0]]
    base = np.stack([x / size[0], y / size[1], (x + y) / sum(size)], axis=-1) * 200
    return Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8), "RGB")


@pytest.mark.parametrize("size, mode, pre", [
    ((500, 375), "RGB", IMAGENET), ((375, 500), "RGB", IMAGENET), ((300, 300), "RGBA", IMAGENET),
    ((257, 999), "L", IMAGENET), ((64, 48), "RGB", Preprocessing(crop_size=32, resize_size=36)),
    ((32, 32), "RGB", Preprocessing(crop_size=32, resize_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))),
])
def test_fast_path_matches_the_reference_transform_within_two_levels(tmp_path, size, mode, pre):
    path = make_image(tmp_path / "x.png", size=size, mode=mode)
    reference = pre.transform()(decode_image(path))
    fast = prepare_image(path, pre)
    assert fast.shape == reference.shape and fast.dtype == torch.float32 and fast.is_contiguous()
    assert pixel_difference(fast, reference, pre) <= 2.01  # 8-bit rounding of the two resize passes


def test_a_crop_larger_than_the_resize_is_padded_as_the_reference_does(tmp_path):
    pre = Preprocessing(crop_size=40, resize_size=32)
    path = make_image(tmp_path / "x.png", size=(50, 50))
    assert torch.equal(prepare_image(path, pre), pre.transform()(decode_image(path)))


def test_a_large_jpeg_is_decoded_at_reduced_scale_and_stays_close(tmp_path):
    path = tmp_path / "photo.jpg"
    smooth_photo((3000, 2100)).save(path, quality=90)
    assert decode_image(path, min_size=1024).size == (1500, 1050)  # 1/2 scale: the shorter side stays >= 1024
    assert decode_image(path, min_size=512).size == (750, 525)  # 1/4
    assert decode_image(path, min_size=1100).size == (3000, 2100)  # 1/2 would go below 1100: full size
    difference = pixel_difference(prepare_image(path, IMAGENET), IMAGENET.transform()(decode_image(path)), IMAGENET)
    assert difference <= 8.0


def test_the_fast_path_applies_exif_orientation(tmp_path):
    image = smooth_photo((1200, 600))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    reference = IMAGENET.transform()(decode_image(path))
    assert pixel_difference(prepare_image(path, IMAGENET), reference, IMAGENET) <= 8.0


def test_the_fast_path_refuses_bad_input_with_the_same_messages():
    with pytest.raises(ImageError, match="not an image format"):
        prepare_image(b"hello, I am text", IMAGENET)
    buffer = io.BytesIO()
    Image.new("L", (4000, 4000)).save(buffer, "PNG")
    with pytest.raises(ImageError, match="above the limit"):
        prepare_image(buffer.getvalue(), IMAGENET, max_pixels=1_000_000)


def test_stack_inputs_is_torch_stack_without_torch():
    tensors = [torch.randn(3, 8, 8) for _ in range(3)]
    stacked = stack_inputs(tensors)
    assert torch.equal(stacked, torch.stack(tensors)) and stacked.dtype == torch.float32 and stacked.is_contiguous()
    tensors[0].zero_()  # a copy, not a view of the inputs
    assert not torch.equal(stacked[0], tensors[0])
