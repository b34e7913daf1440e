"""Images load upright, in RGB, with transparency on white; unreadable files are user errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image

from ti_core.data.images import image_size, is_image_file, load_image
from ti_core.errors import DatasetError

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def red_left_blue_right(width=40, height=20) -> Image.Image:
    image = Image.new("RGB", (width, height), BLUE)
    image.paste(RED, (0, 0, width // 2, height))
    return image


def near(pixel, colour, tolerance=40) -> bool:
    return all(abs(int(a) - int(b)) <= tolerance for a, b in zip(pixel, colour, strict=True))


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp"])
def test_exif_rotated_image_loads_upright_and_reports_the_upright_size(tmp_path, suffix):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / f"phone{suffix}"
    red_left_blue_right().save(path, quality=95, exif=exif.tobytes())

    assert Image.open(path).size == (40, 20)
    assert image_size(path) == (20, 40)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (20, 40)
    # Turned clockwise, the red left half becomes the top.
    assert near(image.getpixel((10, 5)), RED) and near(image.getpixel((10, 35)), BLUE)


def test_rgba_png_is_composited_over_white(tmp_path):
    pixels = np.zeros((4, 3, 4), dtype=np.uint8)  # transparent black
    pixels[0, 0] = (255, 0, 0, 255)  # opaque red
    pixels[1, 0] = (0, 0, 0, 128)  # half-transparent black
    path = tmp_path / "cutout.png"
    Image.fromarray(pixels, "RGBA").save(path)

    image = load_image(path)
    assert image.mode == "RGB" and image.size == (3, 4)
    assert image.getpixel((0, 0)) == RED
    assert image.getpixel((2, 3)) == WHITE
    assert near(image.getpixel((0, 1)), (127, 127, 127), tolerance=2)


def test_palette_png_with_a_transparent_index_is_on_white(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    image.putpixel((1, 0), 1)
    path = tmp_path / "palette.png"
    image.save(path, transparency=0)
    assert np.asarray(load_image(path)).tolist() == [[list(WHITE), [0, 255, 0]]]


def test_grayscale_and_16_bit_grayscale_become_rgb(tmp_path):
    Image.new("L", (3, 2), 100).save(tmp_path / "gray.png")
    assert load_image(tmp_path / "gray.png").getpixel((0, 0)) == (100, 100, 100)

    deep = Image.fromarray(np.full((2, 3), 40000, dtype=np.uint16))
    deep.save(tmp_path / "deep.png")
    value = round(40000 * 255 / 65535)
    assert load_image(tmp_path / "deep.png").getpixel((1, 1)) == (value, value, value)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "print.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path)  # full magenta + yellow: red
    image = load_image(path)
    assert image.mode == "RGB" and near(image.getpixel((4, 4)), RED)


def test_a_file_that_is_not_an_image_is_a_user_error_naming_it(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(DatasetError, match="notes.png: cannot read this image"):
        load_image(path)
    with pytest.raises(DatasetError, match="notes.png"):
        image_size(path)


def test_a_truncated_image_is_a_user_error_naming_it(tmp_path):
    path = tmp_path / "torn.jpg"
    red_left_blue_right(400, 300).save(path)
    path.write_bytes(path.read_bytes()[:600])
    with pytest.raises(DatasetError, match="torn.jpg: cannot read this image"):
        load_image(path)


def test_a_missing_file_is_a_user_error_naming_it(tmp_path):
    with pytest.raises(DatasetError, match="gone.png: image file not found"):
        load_image(tmp_path / "gone.png")


def test_image_extensions_match_in_any_case():
    assert is_image_file("a/B.JPG") and is_image_file("c.Png") and is_image_file("d.webp")
    assert not is_image_file("a.txt") and not is_image_file("a.npz")


def test_images_and_buckets_load_without_torch():
    # The dataset doctor in the GUI process uses them; that process must never load torch.
    code = "import sys, ti_core.data.images, ti_core.data.buckets; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
