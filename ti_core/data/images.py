"""Read training images the way a person sees them: EXIF rotation applied, transparency on
white, any colour mode as 8-bit RGB. Every failure is a user error naming the file.

No torch here: the dataset doctor uses these too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

from ti_core.errors import DatasetError

# sd-scripts' list (it adds .avif / .jxl only when a plugin is installed; Pillow 11.3+ reads
# AVIF itself). Compared without case, so "photo.JPG" and "photo.Png" both count.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp") + (
    (".avif",) if ".avif" in Image.registered_extensions() else ()
)

# EXIF orientations 5-8 turn the picture a quarter, so width and height swap.
_QUARTER_TURNS = {5, 6, 7, 8}
_WHITE = (255, 255, 255)


def is_image_file(path: str | Path) -> bool:
    """Whether the file name has one of IMAGE_EXTENSIONS (any case)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def load_image(path: str | Path) -> Image.Image:
    """The image as 8-bit RGB, upright (EXIF orientation applied), transparent parts on white.

    Grayscale, 16-bit, palette and CMYK images become RGB. A missing, truncated or unreadable
    file raises DatasetError naming it.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            upright = ImageOps.exif_transpose(image)
            return _to_rgb(upright)
    except Exception as error:  # PIL raises OSError, ValueError, SyntaxError, ... by format
        raise _unreadable(path, error) from None


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as load_image will return it, reading only the file's header."""
    path = Path(path)
    try:
        with Image.open(path) as image:  # lazy: decodes no pixels
            width, height = image.size
            if _orientation(image) in _QUARTER_TURNS:
                return height, width
            return width, height
    except Exception as error:
        raise _unreadable(path, error) from None


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright) without decoding the pixels."""
    if image.format == "PNG":
        # PIL's getexif() decodes a whole PNG to look for an eXIf chunk after the pixel data;
        # writers put it before (PNG 1.5 asks for that), where open() has already found it.
        raw = image.info.get("exif")
        if not raw:
            return 1
        exif = Image.Exif()
        exif.load(raw)
    else:
        exif = image.getexif()
    return int(exif.get(ExifTags.Base.Orientation, 1) or 1)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        image = _sixteen_bit_to_gray(image)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        # sd-scripts drops the alpha channel, which leaves whatever colour the transparent
        # pixels happen to hold (often black). White is what a viewer shows and what a
        # cut-out subject is usually meant to sit on.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # a new image even when already RGB: the file closes after


def _sixteen_bit_to_gray(image: Image.Image) -> Image.Image:
    """16-bit grayscale to 8-bit: PIL's own convert would clip everything above 255 to white."""
    values = np.asarray(image, dtype=np.float64)
    # Mode "I" is also what some readers give 8-bit data as; only scale what is really 16-bit.
    sixteen_bit = image.mode.startswith("I;16") or values.max(initial=0) > 255
    peak = 65535.0 if sixteen_bit else 255.0
    eight_bit = np.clip(np.rint(values * (255.0 / peak)), 0, 255).astype(np.uint8)
    return Image.fromarray(eight_bit)


def _unreadable(path: Path, error: Exception) -> DatasetError:
    if isinstance(error, FileNotFoundError):
        return DatasetError(f"{path}: image file not found. Was it moved or deleted?")
    lines = str(error).strip().splitlines()
    reason = f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__
    return DatasetError(
        f"{path}: cannot read this image ({reason}). The file may be truncated or not really "
        "an image; open it in an image viewer, then re-save or remove it."
    )
