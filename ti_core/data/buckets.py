"""Aspect-ratio buckets exactly as sd-scripts makes and assigns them (model_util.py
make_bucket_resolutions, train_util.py BucketManager), and the resize + crop into a bucket
(train_util.py trim_and_resize_if_required).

Sizes are (width, height), as sd-scripts writes bucket resolutions. No torch here.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from PIL import Image

from ti_core.data.spec import DatasetSpec
from ti_core.errors import DatasetError

Size = tuple[int, int]  # (width, height)

# sd-scripts' verify_bucket_reso_steps: the TI trainers ask 64 for SD 1.x/2.x, 32 for SDXL.
MIN_BUCKET_RESO_STEPS = {"sd1": 64, "sd2": 64, "sdxl": 32}


@dataclass(frozen=True)
class BucketChoice:
    """Where one image goes."""

    bucket: Size  # the size it is trained at
    resized_size: Size  # the whole image is scaled to this, then cropped to `bucket`
    aspect_error: float  # bucket aspect ratio minus the image's (sd-scripts logs the mean)


def make_bucket_resolutions(
    max_reso: Size, min_size: int = 256, max_size: int = 1024, divisible: int = 64
) -> list[Size]:
    """sd-scripts' predefined buckets: about max_reso's area each, both sides multiples of
    `divisible` within [min_size, max_size], plus the largest square; sorted."""
    max_area = max_reso[0] * max_reso[1]
    square = int(math.sqrt(max_area) // divisible) * divisible
    resolutions = {(square, square)}
    width = min_size
    while width <= max_size:
        # The height is clamped to max_size, so the most elongated buckets hold less than
        # max_area: sd-scripts keeps them anyway.
        height = min(max_size, int((max_area // width) // divisible) * divisible)
        if height >= min_size:
            resolutions.add((width, height))
            resolutions.add((height, width))
        width += divisible
    return sorted(resolutions)


class BucketRules:
    """A dataset's bucket settings, checked, ready to place images."""

    def __init__(self, spec: DatasetSpec) -> None:
        width, height = spec.resolution
        where = f"{spec.where}: " if spec.where else ""
        if width <= 0 or height <= 0 or width % 8 or height % 8:
            raise DatasetError(
                f"{where}resolution {width}x{height}: both sides must be positive multiples "
                "of 8 (the VAE works in 8-pixel cells). Use e.g. 512 or 512,768."
            )
        self.resolution: Size = (width, height)
        self.enable_bucket = spec.enable_bucket
        # Without bucketing every image is scaled to cover the resolution and centre-cropped.
        # sd-scripts does that only when it caches latents; uncached, it wants images of exactly
        # that size (or larger with random_crop). We do the same either way.
        # sd-scripts turns bucket_no_upscale off when bucketing is off.
        self.no_upscale = spec.enable_bucket and spec.bucket_no_upscale
        self.steps = spec.bucket_reso_steps
        self.max_area = width * height
        self.predefined: list[Size] = [self.resolution]  # bucketing off: one bucket
        if spec.enable_bucket:
            _check_bucket_settings(spec, where)
            # With bucket_no_upscale each image makes its own bucket; none are predefined.
            self.predefined = []
            if not self.no_upscale:
                self.predefined = make_bucket_resolutions(
                    self.resolution, spec.min_bucket_reso, spec.max_bucket_reso, self.steps
                )
        self._predefined_set = set(self.predefined)

    def choose(self, image_size: Size, source: str = "") -> BucketChoice:
        """The bucket sd-scripts' BucketManager.select_bucket gives an image of this size."""
        image_width, image_height = image_size
        aspect_ratio = image_width / image_height
        if self.no_upscale:
            resized_size = self._no_upscale_size(image_width, image_height)
            bucket = (
                resized_size[0] - resized_size[0] % self.steps,
                resized_size[1] - resized_size[1] % self.steps,
            )
            if bucket[0] == 0 or bucket[1] == 0:
                raise DatasetError(
                    f"{source or 'an image'}: {image_width}x{image_height} is smaller than "
                    f"bucket_reso_steps ({self.steps}) on one side, so with bucket_no_upscale it "
                    "fits no bucket. Remove the image or turn bucket_no_upscale off."
                )
        else:
            bucket = image_size
            if bucket not in self._predefined_set:
                # The first of the nearest aspect ratios, in sorted order (numpy's argmin).
                bucket = min(
                    self.predefined, key=lambda reso: abs(reso[0] / reso[1] - aspect_ratio)
                )
            resized_size = cover_size(image_size, bucket)
        return BucketChoice(bucket, resized_size, bucket[0] / bucket[1] - aspect_ratio)

    def _no_upscale_size(self, image_width: int, image_height: int) -> Size:
        """The size a too-large image shrinks to (keeping its aspect ratio, within max_area,
        one side a multiple of the steps); small images keep their size."""
        if image_width * image_height <= self.max_area:
            return (image_width, image_height)
        aspect_ratio = image_width / image_height
        resized_width = math.sqrt(self.max_area * aspect_ratio)
        resized_height = self.max_area / resized_width
        # Round either side to the steps; keep whichever leaves the smaller aspect error.
        width_rounded = self._round_to_steps(resized_width)
        height_for_width = self._round_to_steps(width_rounded / aspect_ratio)
        error_width_rounded = abs(width_rounded / height_for_width - aspect_ratio)
        height_rounded = self._round_to_steps(resized_height)
        width_for_height = self._round_to_steps(height_rounded * aspect_ratio)
        error_height_rounded = abs(width_for_height / height_rounded - aspect_ratio)
        if error_width_rounded < error_height_rounded:
            return (width_rounded, int(width_rounded / aspect_ratio + 0.5))
        return (int(height_rounded * aspect_ratio + 0.5), height_rounded)

    def _round_to_steps(self, value: float) -> int:
        rounded = int(value + 0.5)
        return rounded - rounded % self.steps


def _check_bucket_settings(spec: DatasetSpec, where: str) -> None:
    """sd-scripts' DreamBoothDataset / BucketManager assertions, as user errors."""
    if spec.bucket_reso_steps <= 0:
        raise DatasetError(
            f"{where}bucket_reso_steps = {spec.bucket_reso_steps}: must be a positive number "
            "of pixels (64 is usual)."
        )
    if min(spec.resolution) < spec.min_bucket_reso:
        raise DatasetError(
            f"{where}min_bucket_reso ({spec.min_bucket_reso}) must be equal or less than the "
            f"resolution's shorter side ({min(spec.resolution)}). Lower min_bucket_reso or "
            "raise the resolution."
        )
    if max(spec.resolution) > spec.max_bucket_reso:
        raise DatasetError(
            f"{where}max_bucket_reso ({spec.max_bucket_reso}) must be equal or greater than the "
            f"resolution's longer side ({max(spec.resolution)}). Raise max_bucket_reso or lower "
            "the resolution."
        )


def check_bucket_reso_steps(spec: DatasetSpec, family: str) -> None:
    """sd-scripts' verify_bucket_reso_steps: the model family needs buckets in whole steps."""
    needed = MIN_BUCKET_RESO_STEPS[family]
    if spec.enable_bucket and spec.bucket_reso_steps % needed:
        where = f"{spec.where}: " if spec.where else ""
        raise DatasetError(
            f"{where}bucket_reso_steps is {spec.bucket_reso_steps}; for this model it must be "
            f"divisible by {needed}. Use {needed} (or a multiple of it)."
        )


def cover_size(image_size: Size, bucket: Size) -> Size:
    """The image scaled, aspect ratio kept, to just cover the bucket (sd-scripts' rounding)."""
    image_width, image_height = image_size
    if image_width / image_height > bucket[0] / bucket[1]:  # wider than the bucket: fit heights
        scale = bucket[1] / image_height
    else:
        scale = bucket[0] / image_width
    return (int(image_width * scale + 0.5), int(image_height * scale + 0.5))


def resize_and_crop(
    image: Image.Image,
    bucket: Size,
    random_crop: bool,
    rng: random.Random,
    resized_size: Size | None = None,
) -> tuple[Image.Image, tuple[int, int], Size]:
    """Scale the image to `resized_size` (by default: just covering the bucket), then cut the
    bucket out of it: centred, or at a random place with random_crop.

    Returns (the bucket-sized image, where the cut starts as (top, left) in the scaled image,
    the original (width, height)). Shrinking both sides uses Resampling.BOX, the area average
    that sd-scripts' cv2.INTER_AREA computes (identical for whole-number factors, no ringing);
    anything else uses LANCZOS, as sd-scripts does through PIL.
    """
    original_size = image.size
    target = resized_size or cover_size(original_size, bucket)
    if target != original_size:
        shrinking = original_size[0] > target[0] and original_size[1] > target[1]
        resample = Image.Resampling.BOX if shrinking else Image.Resampling.LANCZOS
        image = image.resize(target, resample=resample)
    width, height = image.size
    left = top = 0
    # Width first, then height: the order sd-scripts draws its random numbers in.
    if width > bucket[0]:
        excess = width - bucket[0]
        left = rng.randint(0, excess) if random_crop else excess // 2
    if height > bucket[1]:
        excess = height - bucket[1]
        top = rng.randint(0, excess) if random_crop else excess // 2
    if (width, height) != bucket:
        image = image.crop((left, top, left + bucket[0], top + bucket[1]))
    if image.size != bucket:  # cannot happen for sizes that BucketRules chose
        raise DatasetError(
            f"internal error: an image of {original_size} resized to {target} cannot fill "
            f"the bucket {bucket}."
        )
    return image, (top, left), original_size


def sdxl_crop_ltrb(bucket: Size, original_size: Size) -> tuple[float, float, float, float]:
    """The crop box sd-scripts reports to SDXL (its get_crop_ltrb), in bucket pixels.

    It is where the image would sit if it were fitted *inside* the bucket (sd-scripts says:
    following Stability AI's preprocessing), not where the centre crop really cuts, and
    random crops are not reflected. We report the same numbers so that SDXL sees what it
    would see under sd-scripts; the latent cache stores them as sd-scripts' crop_ltrb.
    """
    bucket_ratio = bucket[0] / bucket[1]
    image_ratio = original_size[0] / original_size[1]
    if bucket_ratio > image_ratio:
        fitted_width, fitted_height = bucket[1] * image_ratio, float(bucket[1])
    else:
        fitted_width, fitted_height = float(bucket[0]), bucket[0] / image_ratio
    left = (bucket[0] - fitted_width) // 2
    top = (bucket[1] - fitted_height) // 2
    return left, top, left + fitted_width, top + fitted_height


def sdxl_crop_top_left(
    crop_ltrb: tuple[float, float, float, float], bucket: Size, flipped: bool
) -> tuple[int, int]:
    """SDXL's crop condition (top, left); a flipped image's left edge is the old right edge."""
    left, top, right, _ = crop_ltrb
    return (int(top), int(bucket[0] - right)) if flipped else (int(top), int(left))


def bucket_histogram(sizes: Iterable[Size], spec: DatasetSpec) -> dict[Size, int]:
    """How many images (given their (width, height)) land in each bucket, smallest first."""
    rules = BucketRules(spec)
    counts = Counter(rules.choose(size).bucket for size in sizes)
    return dict(sorted(counts.items()))
