"""The image pipeline accepts every common mode and refuses bad input with clear errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from resnetkit.core.errors import ImageError
from resnetkit.core.images import decode_image, iter_image_paths, to_rgb
from resnetkit.core.spec import Preprocessing

from conftest import make_image


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
    with pytest.raises(ImageError, match="not an image format"):
        decode_image(b"hello, I am text")
    with pytest.raises(ImageError, match="No such file"):
        decode_image(tmp_path / "missing.jpg")
    full = make_image(tmp_path / "full.jpg", size=(200, 200)).read_bytes()
    with pytest.raises(ImageError, match="truncated or corrupted"):
        decode_image(full[: len(full) // 2])


def test_decompression_bomb_is_refused_before_decoding():
    buffer = io.BytesIO()
    Image.new("L", (4000, 4000)).save(buffer, "PNG")  # tiny file, 16 M pixels
    with pytest.raises(ImageError, match="above the limit"):
        decode_image(buffer.getvalue(), max_pixels=1_000_000)


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
    (tmp_path / "d" / "notes.txt").write_text("x")
    explicit = tmp_path / "x.dat"
    explicit.write_bytes(b"??")
    found = [p.name for p in iter_image_paths([tmp_path / "d", explicit])]
    assert found == ["b.png", "a.jpg", "x.dat"]
