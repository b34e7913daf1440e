"""The latent cache: every training image is encoded by the VAE once (and once more mirrored
when its subset flips), kept in memory or in `<image stem>.npz` beside the image as
sd-scripts does, and reused by later runs while it is still valid.

Stored values are the raw VAE sample (latent_dist.sample(), unscaled), as sd-scripts stores
them, so our files and sd-scripts' read the same way. A disk file also carries
`ti_cache_key`: the image file's size and mtime, the bucket, the VAE encoder's fingerprint
and this format's version. A file whose key differs (or one without, e.g. sd-scripts' own)
is encoded again and overwritten. Batches get the latents multiplied by the VAE's scaling
factor, ready for the UNet.

An image with a loss mask (data/masks.py) keeps it beside its latents, unflipped, at the
bucket's pixel size in 8 bits (`ti_loss_mask`), with what it was made from (`ti_mask_key`): a
file cached without the mask a run needs, or with another, is encoded again.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import json
import logging
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ti_core.atomic import atomic_path
from ti_core.data.buckets import Size, sdxl_crop_ltrb
from ti_core.data.masks import mask_cache_key, mask_source
from ti_core.data.pixels import TrainImage, load_mask, load_pixels
from ti_core.data.spec import SubsetSpec, parse_face_crop_range
from ti_core.errors import DatasetError

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1  # bump when resizing/cropping changes what a cached latent holds
CACHE_KEY_FIELD = "ti_cache_key"
MASK_FIELD, MASK_KEY_FIELD = "ti_loss_mask", "ti_mask_key"
CacheKey = tuple[str, Size]  # (image path, bucket)
ToEncode = tuple[TrainImage, bool, str | None]  # (image, also flipped, its mask's cache key)


@dataclass
class CachedLatents:
    latents: torch.Tensor  # raw VAE sample (C, h, w), float32, on the CPU
    flipped: torch.Tensor | None  # the mirrored image's, when its subset flips
    original_size: Size  # (width, height) of the image file
    crop_ltrb: tuple[float, float, float, float]  # sd-scripts' SDXL crop box
    mask: np.ndarray | None = None  # the loss mask, uint8 (H, W), unflipped


class LatentCache:
    """Cached latents by (image, bucket); in memory, or read from the .npz on each use."""

    def __init__(self, to_disk: bool, scaling_factor: float, shift_factor: float = 0.0) -> None:
        self.to_disk = to_disk
        self.scaling_factor = scaling_factor
        self.shift_factor = shift_factor
        self._memory: dict[CacheKey, CachedLatents] = {}

    def get(
        self, image: TrainImage, flipped: bool
    ) -> tuple[torch.Tensor, Size, tuple[float, float, float, float]]:
        """(latents ready for the UNet, original (width, height), crop_ltrb) of an image."""
        return self.get_with_mask(image, flipped)[:3]

    def get_with_mask(
        self, image: TrainImage, flipped: bool
    ) -> tuple[torch.Tensor, Size, tuple[float, float, float, float], np.ndarray | None]:
        """get(), and the image's loss mask flipped with it (None when its subset has none)."""
        key = cache_key(image)
        cached = _read_npz(npz_path(image.path)) if self.to_disk else self._memory.get(key)
        if cached is None:
            raise DatasetError(f"{image.path}: not in the latent cache; cache_latents first.")
        raw = cached.flipped if flipped else cached.latents
        if raw is None:
            raise DatasetError(f"{image.path}: the latent cache holds no flipped latents.")
        if tuple(raw.shape[1:]) != _latent_shape(image.bucket):  # a file trusted unchecked
            raise DatasetError(
                f"{image.path}: its latent cache file is for another size than the bucket "
                f"{image.bucket[0]}x{image.bucket[1]}; run once without skip_cache_check to "
                "encode it again."
            )
        mask = None
        if mask_source(image.subset) is not None:
            if cached.mask is None:
                raise DatasetError(f"{image.path}: the latent cache holds no loss mask.")
            mask = np.ascontiguousarray(cached.mask[:, ::-1]) if flipped else cached.mask
        latents = (raw - self.shift_factor) * self.scaling_factor
        return latents, cached.original_size, cached.crop_ltrb, mask

    def put(self, key: CacheKey, cached: CachedLatents) -> None:
        self._memory[key] = cached


def check_latent_cacheable(subsets: Iterable[SubsetSpec]) -> None:
    """A cached latent is one fixed crop in fixed colours, so color_aug and random_crop
    cannot work with it (sd-scripts' is_latent_cacheable)."""
    offending = [s for s in subsets if s.color_aug or s.random_crop]
    if offending:
        where = ", ".join(sorted({s.where or s.image_dir or "a subset" for s in offending}))
        raise DatasetError(
            "when caching latents, either color_aug or random_crop cannot be used "
            f"(set in {where}). Turn cache_latents and cache_latents_to_disk off, or turn "
            "color_aug and random_crop off."
        )


def _check_face_crops_cacheable(images: Sequence[TrainImage]) -> None:
    """A face crop at a random scale (face_crop_aug_range LOW < HIGH) changes every step, which
    one cached latent cannot; LOW = HIGH crops the same way each time and caches."""
    offending = set()
    for image in images:
        scales = parse_face_crop_range(image.subset.face_crop_aug_range) if image.face else None
        if scales and scales[0] != scales[1]:
            offending.add(image.subset.where or image.subset.image_dir or "a subset")
    if offending:
        raise DatasetError(
            "when caching latents, face_crop_aug_range must be one scale, LOW = HIGH (set in "
            f"{', '.join(sorted(offending))}): a cached latent is one crop. Turn cache_latents and "
            'cache_latents_to_disk off, or give one value twice, e.g. "3.0,3.0".'
        )


def npz_path(image_path: str | Path) -> Path:
    """sd-scripts' cache file for an image: its stem with .npz, in the same folder."""
    return Path(image_path).with_suffix(".npz")


def cache_key(image: TrainImage) -> CacheKey:
    return (str(image.path), image.bucket)


def cache_latents(
    vae: Any,
    images: Sequence[TrainImage],
    vae_batch_size: int = 1,
    to_disk: bool = False,
    *,
    generator: torch.Generator | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    skip_check: bool = False,
) -> LatentCache:
    """Encode every (image, bucket) once, both ways round where its subset flips; on disk,
    files that are still valid are kept and not encoded again (`skip_check`, sd-scripts'
    skip_cache_check: any file there is kept, unread).

    Like sd-scripts, images are encoded in order of bucket area, vae_batch_size at a time,
    a batch never mixing buckets. on_progress(done, total) is called after each VAE batch.
    Leaves the VAE where it was; release_vae() takes it off the accelerator afterwards.
    """
    images = list(images)
    check_latent_cacheable(image.subset for image in images)
    _check_face_crops_cacheable(images)
    config = vae.config
    cache = LatentCache(to_disk, config.scaling_factor, config.get("shift_factor") or 0.0)
    fingerprint = vae_fingerprint(vae)
    todo = _images_to_encode(images, to_disk, fingerprint, skip_check)
    groups = _vae_batches(todo, max(1, vae_batch_size))
    log.info("caching latents: %d of %d images to encode", len(todo), len(images))
    for done, group in enumerate(groups, start=1):
        _encode_group(vae, group, cache, fingerprint, generator)
        if on_progress is not None:
            on_progress(done, len(groups))
    return cache


def _vae_batches(todo: list[ToEncode], vae_batch_size: int) -> list[list[ToEncode]]:
    """sd-scripts' order: by bucket area (a stable sort), vae_batch_size at a time, a new
    batch wherever the bucket changes."""
    todo = sorted(todo, key=lambda item: item[0].bucket[0] * item[0].bucket[1])
    batches = []
    for _, same_bucket in itertools.groupby(todo, key=lambda item: item[0].bucket):
        members = list(same_bucket)
        batches += [
            members[start : start + vae_batch_size]
            for start in range(0, len(members), vae_batch_size)
        ]
    return batches


def _images_to_encode(
    images: list[TrainImage], to_disk: bool, fingerprint: str, skip_check: bool = False
) -> list[ToEncode]:
    """Unique (image, bucket)s still to encode, each with whether it needs a flipped copy and
    the key of the loss mask it needs (None: none)."""
    wanted: dict[CacheKey, TrainImage] = {}
    flips: dict[CacheKey, bool] = {}
    masks: dict[CacheKey, str | None] = {}
    for image in images:  # one image in two subsets: flipped if either flips
        key = cache_key(image)
        flips[key] = flips.get(key, False) or image.subset.flip_aug
        mask_key, kept = mask_cache_key(image.entry), masks.get(key)
        if mask_key and kept and mask_key != kept:
            raise DatasetError(
                f"{image.path}: two subsets give this image different loss masks; a latent "
                "cache keeps one. Use one mask for it, or turn cache_latents off."
            )
        if not kept:  # the image as the subset with a mask has it, if one does
            wanted[key], masks[key] = image, mask_key
    if not to_disk:
        return [(image, flips[key], masks[key]) for key, image in wanted.items()]
    by_file: dict[Path, list[CacheKey]] = {}
    for key in wanted:
        by_file.setdefault(npz_path(key[0]), []).append(key)
    for path, keys in by_file.items():
        if len(keys) > 1:
            described = ", ".join(f"{Path(p).name} at {w}x{h}" for p, (w, h) in keys)
            raise DatasetError(
                f"{path}: {described} would all cache into this one file. Rename the images "
                "so their names differ before the extension, or cache latents in memory."
            )
    return [
        (image, flips[key], masks[key])
        for key, image in wanted.items()
        if not (skip_check and npz_path(image.path).is_file())
        and not _disk_cache_is_valid(image, flips[key], fingerprint, masks[key])
    ]


def _disk_cache_is_valid(
    image: TrainImage, flip: bool, fingerprint: str, mask_key: str | None = None
) -> bool:
    path = npz_path(image.path)
    if not path.is_file():
        return False
    try:
        with np.load(path) as npz:
            if CACHE_KEY_FIELD not in npz:  # sd-scripts' own file: we cannot tell what it holds
                return False
            if npz[CACHE_KEY_FIELD].item() != _disk_key(image, fingerprint):
                return False
            expected = _latent_shape(image.bucket)
            valid = tuple(npz["latents"].shape[1:3]) == expected
            if flip:
                flipped = npz.get("latents_flipped")
                valid = valid and flipped is not None and tuple(flipped.shape[1:3]) == expected
            if mask_key is not None:  # a file cached without this mask is not enough
                bucket_pixels = (image.bucket[1], image.bucket[0])
                valid = valid and MASK_KEY_FIELD in npz and MASK_FIELD in npz
                valid = valid and npz[MASK_KEY_FIELD].item() == mask_key
                valid = valid and tuple(npz[MASK_FIELD].shape) == bucket_pixels
            return valid
    except Exception as error:  # a torn or foreign file is simply encoded again
        log.warning("%s: unreadable latent cache (%s); encoding again", path, error)
        return False


def _latent_shape(bucket: Size) -> tuple[int, int]:
    return (bucket[1] // 8, bucket[0] // 8)  # (h, w); every SD / SDXL VAE shrinks by 8


def _disk_key(image: TrainImage, fingerprint: str) -> str:
    stat = image.path.stat()
    key = {
        "format": CACHE_FORMAT_VERSION,
        "image_bytes": stat.st_size,
        "image_mtime_ns": stat.st_mtime_ns,
        "bucket": list(image.bucket),
        "resized_size": list(image.resized_size),
        "vae": fingerprint,
    }
    # Only when set, so the files cached before these options existed stay valid.
    if image.subset.resize_interpolation:
        key["resize_interpolation"] = image.subset.resize_interpolation
    if image.face is not None:
        key["face_crop"] = [image.subset.face_crop_aug_range, *image.face]
    return json.dumps(key, sort_keys=True)


def _encode_group(
    vae: Any,
    group: list[ToEncode],
    cache: LatentCache,
    fingerprint: str,
    generator: torch.Generator | None,
) -> None:
    """Encode one VAE batch (one bucket), and its mirror image where any member flips."""
    pixels, sizes = [], []
    for image, _, _ in group:
        # Cacheable subsets neither crop at random nor colour-augment: nothing draws from rng.
        tensor, original_size = load_pixels(image, flipped=False, rng=random.Random(0))
        pixels.append(tensor)
        sizes.append(original_size)
    batch = torch.stack(pixels)
    latents = encode_pixels(vae, batch, generator).float().cpu()
    flipped = None
    if any(flip for _, flip, _ in group):
        flipped = encode_pixels(vae, torch.flip(batch, dims=[3]), generator).float().cpu()
    for row, ((image, flip, mask_key), original_size) in enumerate(zip(group, sizes, strict=True)):
        mirrored = flipped[row] if flip and flipped is not None else None
        if torch.isnan(latents[row]).any() or (
            mirrored is not None and torch.isnan(mirrored).any()
        ):
            raise DatasetError(
                f"{image.path}: the VAE gave NaN latents. In half precision the SD VAE can "
                "overflow; set no_half_vae (or use a fixed fp16 VAE) and run again."
            )
        cached = CachedLatents(
            latents[row].clone(),
            None if mirrored is None else mirrored.clone(),
            original_size,
            sdxl_crop_ltrb(image.bucket, original_size),
            None if mask_key is None else load_mask(image, flipped=False, rng=random.Random(0)),
        )
        if cache.to_disk:
            _write_npz(image, cached, fingerprint, mask_key)
        else:
            cache.put(cache_key(image), cached)


def _write_npz(
    image: TrainImage, cached: CachedLatents, fingerprint: str, mask_key: str | None = None
) -> None:
    """sd-scripts' layout (latents, original_size, crop_ltrb, latents_flipped) plus our key;
    written to a temporary name and renamed, so a stopped run leaves no torn file."""
    path = npz_path(image.path)
    arrays = {
        "latents": cached.latents.numpy(),
        "original_size": np.array(cached.original_size),
        "crop_ltrb": np.array(cached.crop_ltrb),
        CACHE_KEY_FIELD: np.array(_disk_key(image, fingerprint)),
    }
    if cached.flipped is not None:
        arrays["latents_flipped"] = cached.flipped.numpy()
    if cached.mask is not None and mask_key is not None:
        arrays[MASK_FIELD] = cached.mask
        arrays[MASK_KEY_FIELD] = np.array(mask_key)
    try:
        with atomic_path(path) as temporary, open(temporary, "wb") as file:
            np.savez(file, **arrays)
    except OSError as error:
        raise DatasetError(
            f"{path}: cannot write the latent cache beside the image ({error.strerror}). "
            "Make the folder writable, or cache latents in memory (cache_latents_to_disk off)."
        ) from None


def _read_npz(path: Path) -> CachedLatents:
    with np.load(path) as npz:
        flipped = npz.get("latents_flipped")
        return CachedLatents(
            torch.from_numpy(npz["latents"]),
            None if flipped is None else torch.from_numpy(flipped),
            tuple(int(v) for v in npz["original_size"]),  # type: ignore[arg-type]
            tuple(float(v) for v in npz["crop_ltrb"]),  # type: ignore[arg-type]
            npz.get(MASK_FIELD),
        )


def encode_pixels(
    vae: Any, pixels: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Raw latents (a sample of the VAE's posterior, as sd-scripts takes) on the VAE's device."""
    with torch.no_grad():
        batch = pixels.to(device=vae.device, dtype=vae.dtype)
        return vae.encode(batch).latent_dist.sample(generator=generator)


def scale_latents(raw: torch.Tensor, vae: Any) -> torch.Tensor:
    """Raw VAE latents to what the UNet trains on: (raw - shift_factor) * scaling_factor."""
    shift = vae.config.get("shift_factor") or 0.0
    return (raw - shift) * vae.config.scaling_factor


def vae_fingerprint(vae: Any) -> str:
    """A short hash of what decides the encoder's output: the name, shape, dtype and values of
    every encoder weight (about 70 MB for SD's VAE in half precision: well under a second).
    Decoder-only fine-tunes (sd-vae-ft-mse, ...) encode identically, so they keep the cache."""
    digest = hashlib.blake2b(digest_size=8)
    for name, tensor in vae.state_dict().items():
        if name.startswith(("encoder.", "quant_conv.")):
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
            raw_bytes = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
            digest.update(raw_bytes.numpy())
    return digest.hexdigest()


def release_vae(vae: Any) -> None:
    """Move the VAE to the CPU after caching and give its accelerator memory back (it stays
    loaded: sampling still decodes with it)."""
    vae.to("cpu")
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
