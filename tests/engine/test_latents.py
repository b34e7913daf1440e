"""The latent cache with the demo's tiny VAE: memory equals a direct encode, the disk cache is
reused across runs and re-encoded when the image, the bucket, the flip or the VAE changes."""

from __future__ import annotations

import copy
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ti_core.data.batches import EpochBatches, prepare_images
from ti_core.data.latents import (
    CACHE_KEY_FIELD,
    cache_latents,
    encode_pixels,
    npz_path,
    release_vae,
    scale_latents,
    vae_fingerprint,
)
from ti_core.data.pixels import load_pixels
from ti_core.data.spec import DatasetSpec, ImageEntry, SubsetSpec
from ti_core.errors import DatasetError
from ti_core.models.demo import demo_dir
from ti_core.models.demo_dataset import demo_dataset
from ti_core.models.loading import load_vae

NUM_IMAGES = 4


@pytest.fixture(scope="module")
def vae(demo_cache):
    return load_vae(str(demo_dir("sd1") / "model"), "sd1").eval()


@pytest.fixture
def folder(tmp_path) -> Path:
    return demo_dataset(tmp_path / "dataset", num_images=NUM_IMAGES, repeats=1)


class Counting:
    """Wraps vae.encode and counts the images it is given (and the shapes of its batches)."""

    def __init__(self, vae):
        self.vae, self.images, self.shapes = vae, 0, []
        self.original = vae.encode

    def __enter__(self):
        def encode(pixels, *args, **kwargs):
            self.images += pixels.shape[0]
            self.shapes.append(tuple(pixels.shape))
            return self.original(pixels, *args, **kwargs)

        self.vae.encode = encode
        return self

    def __exit__(self, *exc):
        del self.vae.encode  # back to the class's method


def images_of(folder: Path, resolution=(64, 64), **subset_options):
    subset = SubsetSpec(image_dir=str(folder), **subset_options)
    spec = DatasetSpec(resolution=resolution, batch_size=2, subsets=[subset])
    entries = [ImageEntry(p, p.stem, "file", subset) for p in sorted(folder.glob("*.png"))]
    return spec, prepare_images(entries, spec)


def encoded_on_disk(vae, images, **options) -> int:
    with Counting(vae) as counting:
        cache_latents(vae, images, vae_batch_size=2, to_disk=True, **options)
    return counting.images


def test_memory_cache_equals_a_direct_encode(vae, folder):
    _, images = images_of(folder)
    cache = cache_latents(vae, images, vae_batch_size=1, generator=torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)
    for image in images:
        pixels, _ = load_pixels(image, False, random.Random(0))
        direct = scale_latents(encode_pixels(vae, pixels[None], generator), vae)[0]
        latents, original_size, _ = cache.get(image, flipped=False)
        assert latents.shape == (4, 8, 8) and original_size == (64, 64)
        assert torch.equal(latents, direct)


def test_cached_batches_keep_the_pixel_batch_contract(vae, folder):
    spec, images = images_of(folder, flip_aug=True)
    cache = cache_latents(vae, images, vae_batch_size=4)
    from_cache = EpochBatches([(spec, images)], lambda e, n, r: e.caption, latent_cache=cache)
    from_pixels = EpochBatches([(spec, images)], lambda e, n, r: e.caption)
    for cached, loaded in zip(from_cache, from_pixels, strict=True):
        assert cached["latents"].shape == (2, 4, 8, 8) and "pixels" not in cached
        assert set(cached) - {"latents"} == set(loaded) - {"pixels"}
        for key in ("paths", "flipped", "captions"):
            assert cached[key] == loaded[key]
        for key in ("original_size", "crop_top_left", "target_size", "loss_weights"):
            assert torch.equal(cached[key], loaded[key])
    flipped_image = images[0]
    plain = cache.get(flipped_image, flipped=False)[0]
    assert not torch.equal(plain, cache.get(flipped_image, flipped=True)[0])


def test_a_vae_batch_never_mixes_buckets(vae, folder):
    for path in sorted(folder.glob("*.png"))[:2]:
        Image.open(path).resize((128, 64)).save(path.with_name(f"wide-{path.name}"))
    subset = SubsetSpec(image_dir=str(folder))
    spec = DatasetSpec(
        resolution=(64, 64), enable_bucket=True, min_bucket_reso=32, max_bucket_reso=128,
        bucket_reso_steps=16, subsets=[subset],
    )  # fmt: skip
    entries = [ImageEntry(p, p.stem, "file", subset) for p in sorted(folder.glob("*.png"))]
    images = prepare_images(entries, spec)
    with Counting(vae) as counting:
        cache = cache_latents(vae, images, vae_batch_size=4)
    # By bucket area (80x48 before 64x64), four at a time, a new batch where the bucket changes.
    assert counting.shapes == [(2, 3, 48, 80), (4, 3, 64, 64)]
    wide = next(image for image in images if image.path.name.startswith("wide-"))
    assert cache.get(wide, flipped=False)[0].shape == (4, 6, 10)


def test_disk_cache_is_written_beside_the_images_in_sd_scripts_layout(vae, folder):
    _, images = images_of(folder, flip_aug=True)
    assert encoded_on_disk(vae, images) == 2 * NUM_IMAGES  # and once more, mirrored
    with np.load(npz_path(images[0].path)) as npz:
        assert npz["latents"].shape == (4, 8, 8) and npz["latents_flipped"].shape == (4, 8, 8)
        assert npz["original_size"].tolist() == [64, 64]
        assert npz["crop_ltrb"].tolist() == [0, 0, 64, 64]
        assert CACHE_KEY_FIELD in npz
    assert sorted(p.name for p in folder.glob("*.npz")) == [f"{i:03d}.npz" for i in range(4)]
    assert not list(folder.glob("*.tmp"))


def test_disk_cache_is_reused_by_the_next_run(vae, folder):
    _, images = images_of(folder)
    assert encoded_on_disk(vae, images) == NUM_IMAGES
    assert encoded_on_disk(vae, images) == 0
    cache = cache_latents(vae, images, to_disk=True)
    latents, _, _ = cache.get(images[1], flipped=False)
    with np.load(npz_path(images[1].path)) as npz:
        raw = torch.from_numpy(npz["latents"])
    assert torch.equal(latents, raw * vae.config.scaling_factor)


def test_touching_or_changing_an_image_re_encodes_it(vae, folder):
    _, images = images_of(folder)
    encoded_on_disk(vae, images)
    stat = images[0].path.stat()
    os.utime(images[0].path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert encoded_on_disk(vae, images) == 1
    shutil.copyfile(images[2].path, images[1].path)  # new content
    assert encoded_on_disk(vae, images) == 1
    assert encoded_on_disk(vae, images) == 0


def test_a_new_bucket_or_turning_flip_on_re_encodes(vae, folder):
    _, images = images_of(folder)
    encoded_on_disk(vae, images)
    _, larger = images_of(folder, resolution=(128, 128))
    assert encoded_on_disk(vae, larger) == NUM_IMAGES
    with np.load(npz_path(larger[0].path)) as npz:
        assert npz["latents"].shape == (4, 16, 16)
    _, flipping = images_of(folder, resolution=(128, 128), flip_aug=True)
    assert encoded_on_disk(vae, flipping) == 2 * NUM_IMAGES
    _, not_flipping = images_of(folder, resolution=(128, 128))
    assert encoded_on_disk(vae, not_flipping) == 0  # a file with flipped latents still serves


def test_another_vae_re_encodes(vae, folder):
    _, images = images_of(folder)
    encoded_on_disk(vae, images)
    other = copy.deepcopy(vae)
    with torch.no_grad():
        other.encoder.conv_in.weight.add_(0.01)
    assert vae_fingerprint(other) != vae_fingerprint(vae)
    assert encoded_on_disk(other, images) == NUM_IMAGES
    decoder_tuned = copy.deepcopy(vae)
    with torch.no_grad():
        decoder_tuned.decoder.conv_out.weight.add_(0.01)
    assert encoded_on_disk(other, images) == 0
    # A decoder-only fine-tune (like sd-vae-ft-mse) encodes the same: the cache stays.
    assert vae_fingerprint(decoder_tuned) == vae_fingerprint(vae)


def test_a_file_without_our_key_is_encoded_again(vae, folder):
    _, images = images_of(folder)
    np.savez(
        npz_path(images[0].path),
        latents=np.zeros((4, 8, 8), np.float32),
        original_size=np.array([64, 64]),
        crop_ltrb=np.array([0, 0, 64, 64]),
    )  # as sd-scripts writes it
    npz_path(images[1].path).write_bytes(b"torn")
    assert encoded_on_disk(vae, images) == NUM_IMAGES


def test_two_images_sharing_a_cache_file_are_refused(vae, folder):
    shutil.copyfile(folder / "000.png", folder / "000.webp")
    subset = SubsetSpec(image_dir=str(folder))
    spec = DatasetSpec(resolution=(64, 64), subsets=[subset])
    entries = [ImageEntry(folder / name, "", "file", subset) for name in ("000.png", "000.webp")]
    with pytest.raises(DatasetError, match="would all cache into this one file"):
        cache_latents(vae, prepare_images(entries, spec), to_disk=True)
    cache_latents(vae, prepare_images(entries, spec), to_disk=False)  # in memory: fine


@pytest.mark.parametrize("option", ["color_aug", "random_crop"])
def test_options_that_change_each_epoch_cannot_be_cached(vae, folder, option):
    _, images = images_of(folder, where="dataset.toml: datasets[0].subsets[0]", **{option: True})
    message = "when caching latents, either color_aug or random_crop cannot be used"
    with pytest.raises(DatasetError, match=message) as caught:
        cache_latents(vae, images)
    assert "datasets[0].subsets[0]" in str(caught.value)


def test_release_vae_leaves_it_on_the_cpu_and_usable(vae, folder):
    release_vae(vae)
    assert vae.device.type == "cpu"
    _, images = images_of(folder)
    cache = cache_latents(vae, images[:1])
    assert cache.get(images[0], flipped=False)[0].shape == (4, 8, 8)
