"""One training image as a step reads it: the image placed in its bucket (TrainImage), and its
pixels after resize, crop, colour augmentation and flip (sd-scripts' order). Used by the
batches and by the latent cache, which both read images this way.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ti_core.data.buckets import Size, resize_and_crop
from ti_core.data.images import load_image
from ti_core.data.masks import read_mask
from ti_core.data.spec import ImageEntry, SubsetSpec, parse_face_crop_range

# sd-scripts' resize_interpolation names as PIL filters. sd-scripts resizes with OpenCV except
# for lanczos and box; PIL's bilinear and bicubic also smooth when shrinking (OpenCV's do not),
# and its box filter is the area average of OpenCV's INTER_AREA.
RESAMPLING = {
    "lanczos": Image.Resampling.LANCZOS, "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR, "linear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC, "cubic": Image.Resampling.BICUBIC,
    "area": Image.Resampling.BOX, "box": Image.Resampling.BOX,
}  # fmt: skip


@dataclass
class TrainImage:
    """One image of a dataset, placed in its bucket, with the repeats it gets per epoch."""

    entry: ImageEntry
    size: Size  # (width, height), upright
    bucket: Size
    resized_size: Size  # scaled to this before the crop to `bucket`
    repeats: int
    # (centre x, centre y, width, height) of the face in the file, when face_crop_aug_range
    # crops around it instead (sd-scripts reads it from the name: NAME_cx_cy_w_h.png)
    face: tuple[int, int, int, int] | None = None

    @property
    def path(self) -> Path:
        return Path(self.entry.path)

    @property
    def subset(self) -> SubsetSpec:
        return self.entry.subset


def load_pixels(image: TrainImage, flipped: bool, rng: random.Random) -> tuple[torch.Tensor, Size]:
    """The image as a (3, H, W) tensor in [-1, 1] at its bucket's size, after resize, crop,
    colour augmentation and flip (sd-scripts' order); also its original (width, height)."""
    subset = image.subset
    picture, original_size = fit_to_bucket(load_image(image.path), image, rng)
    rgb = np.array(picture)  # a writable copy: torch refuses to share read-only memory
    if subset.color_aug:
        rgb = color_augment(rgb, rng)
    if flipped:
        rgb = rgb[:, ::-1]
    pixels = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float()
    return pixels / 127.5 - 1.0, original_size


def fit_to_bucket(
    picture: Image.Image, image: TrainImage, rng: random.Random
) -> tuple[Image.Image, Size]:
    """The picture (the image, or its mask: the same cut) resized and cropped to the image's
    bucket with the subset's resize_interpolation: around the face (face_crop_aug_range), or
    just covering the bucket and cut centred or at random (random_crop). Also its original
    (width, height)."""
    subset, original_size = image.subset, picture.size
    if image.face is not None:
        return face_crop(picture, image.face, image.bucket, subset, rng), original_size
    if subset.resize_interpolation and picture.size != image.resized_size:
        picture = picture.resize(image.resized_size, RESAMPLING[subset.resize_interpolation])
    picture, _, _ = resize_and_crop(
        picture, image.bucket, subset.random_crop, rng, image.resized_size
    )
    return picture, original_size


def face_crop(
    picture: Image.Image,
    face: tuple[int, int, int, int],
    target: Size,
    subset: SubsetSpec,
    rng: random.Random,
) -> Image.Image:
    """sd-scripts' crop_target: scale the picture so the face is 1/HIGH to 1/LOW of the target's
    shorter side (at random in between; never enlarged beyond covering the target), then cut
    the target out centred on the face: moved a little at random when LOW < HIGH, or anywhere
    the face stays within reach with random_crop."""
    if picture.size == target:
        return picture
    low, high = parse_face_crop_range(subset.face_crop_aug_range) or (1.0, 1.0)
    (width, height), (target_width, target_height) = picture.size, target
    face_x, face_y, face_width, face_height = face
    face_size, side = max(face_width, face_height), min(target)
    cover = max(target_width / width, target_height / height)
    # sd-scripts caps both at 1 (only shrinking); an image smaller than the target is enlarged
    # just enough to cover it, where sd-scripts stops with an error.
    min_scale = max(cover, min(1.0, side / (face_size * high)))
    max_scale = max(min_scale, min(1.0, side / (face_size * low)))
    scale = min_scale if min_scale >= max_scale else rng.uniform(min_scale, max_scale)
    size = (int(width * scale + 0.5), int(height * scale + 0.5))
    if size != picture.size:
        default = "area" if scale < 1 else "lanczos"
        picture = picture.resize(size, RESAMPLING[subset.resize_interpolation or default])
    start = []
    # Height first, then width: the order sd-scripts draws its random numbers in.
    for wanted, length, centre in (
        (target_height, size[1], int(face_y * scale + 0.5)),
        (target_width, size[0], int(face_x * scale + 0.5)),
    ):
        first = centre - wanted // 2
        if subset.random_crop:  # keeps the face more often near the middle, background too
            reach = max(length - centre, centre)
            first += rng.randint(0, reach) + rng.randint(0, reach) - reach
        elif low != high and face_size > side // 10 and face_size >= 40:
            first += rng.randint(-face_size // 20, face_size // 20)
        start.append(max(0, min(first, length - wanted)))
    top, left = start
    return picture.crop((left, top, left + target_width, top + target_height))


def load_pixels_and_mask(
    image: TrainImage, flipped: bool, rng: random.Random
) -> tuple[torch.Tensor, np.ndarray | None, Size]:
    """load_pixels, and the loss mask cut and flipped the same way (None without a mask)."""
    mask_rng = random.Random()
    mask_rng.setstate(rng.getstate())  # the same random crop as the image's
    pixels, original_size = load_pixels(image, flipped, rng)
    return pixels, load_mask(image, flipped, mask_rng), original_size


def load_mask(image: TrainImage, flipped: bool, rng: random.Random) -> np.ndarray | None:
    """The image's loss mask (uint8 (H, W), 255 = full weight) at its bucket's size, resized,
    cropped and flipped as load_pixels does to the image given `rng` in the same state; None
    when its subset has no mask (data/masks.py)."""
    mask = read_mask(image.entry, image.size)
    if mask is None:
        return None
    mask, _ = fit_to_bucket(mask, image, rng)  # face crop and resize filter included
    weights = np.array(mask)
    return np.ascontiguousarray(weights[:, ::-1]) if flipped else weights


def color_augment(rgb: np.ndarray, rng: random.Random) -> np.ndarray:
    """sd-scripts' color_aug: a third of the time, either shift the hue by up to 8 OpenCV
    units (16 degrees) or apply a gamma between 0.95 and 1.05; otherwise leave the image."""
    if rng.random() > 0.33:
        return rgb
    if rng.random() > 0.5:
        return shift_hue(rgb, 2.0 * rng.uniform(-8.0, 8.0))
    # sd-scripts raises the raw 0-255 values to the power (255 ** 1.05 = 336, clipped), which
    # changes brightness by up to a quarter; the albumentations RandomGamma it replaced, and
    # this, work on values scaled to 0-1.
    gamma = rng.uniform(0.95, 1.05)
    scaled = (rgb.astype(np.float32) / 255.0) ** gamma
    return np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)


def shift_hue(rgb: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate every pixel's hue by `degrees`, keeping saturation and value (HSV)."""
    x = rgb.astype(np.float32) / 255.0
    red, green, blue = x[..., 0], x[..., 1], x[..., 2]
    value = x.max(axis=-1)
    chroma = value - x.min(axis=-1)
    safe = np.where(chroma > 0, chroma, 1.0)
    hue = np.where(
        value == red,
        ((green - blue) / safe) % 6.0,
        np.where(value == green, (blue - red) / safe + 2.0, (red - green) / safe + 4.0),
    )
    hue = (hue + degrees / 60.0) % 6.0

    def channel(n: float) -> np.ndarray:
        k = (n + hue) % 6.0
        return value - chroma * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)

    shifted = np.stack([channel(5.0), channel(3.0), channel(1.0)], axis=-1)
    return np.clip(np.rint(shifted * 255.0), 0, 255).astype(np.uint8)
