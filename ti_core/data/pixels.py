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

from ti_core.data.buckets import Size, resize_and_crop
from ti_core.data.images import load_image
from ti_core.data.spec import ImageEntry, SubsetSpec


@dataclass
class TrainImage:
    """One image of a dataset, placed in its bucket, with the repeats it gets per epoch."""

    entry: ImageEntry
    size: Size  # (width, height), upright
    bucket: Size
    resized_size: Size  # scaled to this before the crop to `bucket`
    repeats: int

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
    picture = load_image(image.path)
    picture, _, original_size = resize_and_crop(
        picture, image.bucket, subset.random_crop, rng, image.resized_size
    )
    rgb = np.array(picture)  # a writable copy: torch refuses to share read-only memory
    if subset.color_aug:
        rgb = color_augment(rgb, rng)
    if flipped:
        rgb = rgb[:, ::-1]
    pixels = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float()
    return pixels / 127.5 - 1.0, original_size


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
