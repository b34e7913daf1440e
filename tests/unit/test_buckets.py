"""Buckets follow sd-scripts to the pixel: the same predefined lists, the same choice per image,
the same resize, crop and SDXL crop numbers. Expected values were worked out by hand from
sd-scripts' make_bucket_resolutions / BucketManager.select_bucket / get_crop_ltrb."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from ti_core.data.buckets import (
    BucketRules,
    bucket_histogram,
    check_bucket_reso_steps,
    make_bucket_resolutions,
    resize_and_crop,
    sdxl_crop_ltrb,
    sdxl_crop_top_left,
)
from ti_core.data.spec import DatasetSpec
from ti_core.errors import DatasetError

SD_512 = [
    (256, 832), (256, 896), (256, 960), (256, 1024), (320, 704), (320, 768), (384, 640),
    (448, 576), (512, 512), (576, 448), (640, 384), (704, 320), (768, 320), (832, 256),
    (896, 256), (960, 256), (1024, 256),
]  # fmt: skip
SD_768 = [
    (256, 1024), (320, 1024), (384, 1024), (448, 1024), (512, 1024), (576, 960), (576, 1024),
    (640, 896), (704, 832), (768, 768), (832, 704), (896, 640), (960, 576), (1024, 256),
    (1024, 320), (1024, 384), (1024, 448), (1024, 512), (1024, 576),
]  # fmt: skip


def bucketed(resolution=(512, 512), **settings) -> DatasetSpec:
    return DatasetSpec(resolution=resolution, enable_bucket=True, **settings)


def test_512_buckets_are_sd_scripts_list():
    assert make_bucket_resolutions((512, 512), 256, 1024, 64) == SD_512


def test_768_buckets_are_sd_scripts_list():
    # max_bucket_reso 1024 clamps the long side, so e.g. 256x1024 holds far less than 768^2.
    assert make_bucket_resolutions((768, 768), 256, 1024, 64) == SD_768


def test_1024_buckets_hold_the_usual_sdxl_sizes():
    buckets = make_bucket_resolutions((1024, 1024), 256, 2048, 64)
    assert len(buckets) == 41
    for size in [(1024, 1024), (1152, 896), (896, 1152), (1216, 832), (832, 1216), (1344, 768),
                 (768, 1344), (1536, 640), (640, 1536), (2048, 256), (256, 2048)]:  # fmt: skip
        assert size in buckets
    assert (1280, 1280) not in buckets and (1088, 1024) not in buckets
    # Width 512: 1048576 // 512 = 2048 -> 2048; width 576: 1820 -> 1792 (steps of 64).
    assert [b for b in buckets if b[0] in (512, 576)] == [
        (512, 1856), (512, 1920), (512, 1984), (512, 2048), (576, 1664), (576, 1728), (576, 1792),
    ]  # fmt: skip


def test_with_the_default_max_reso_every_1024_bucket_has_a_1024_side():
    buckets = make_bucket_resolutions((1024, 1024), 256, 1024, 64)
    assert len(buckets) == 25
    assert all(1024 in bucket for bucket in buckets)


@pytest.mark.parametrize(
    ("size", "bucket", "resized"),
    [
        ((1200, 800), (640, 384), (640, 427)),  # aspect 1.5: 640/384 = 1.67 beats 576/448 = 1.29
        ((800, 1200), (384, 640), (427, 640)),
        ((3000, 1000), (832, 256), (832, 277)),  # 3.25 and 2.4: the first nearest, sorted order
        ((333, 777), (320, 768), (329, 768)),
        ((64, 64), (512, 512), (512, 512)),  # small images are scaled up
        ((640, 384), (640, 384), (640, 384)),  # an image already of a bucket's size stays
    ],
)
def test_an_image_goes_to_the_bucket_sd_scripts_picks(size, bucket, resized):
    choice = BucketRules(bucketed()).choose(size)
    assert (choice.bucket, choice.resized_size) == (bucket, resized)
    assert choice.aspect_error == pytest.approx(bucket[0] / bucket[1] - size[0] / size[1])


@pytest.mark.parametrize(
    ("size", "bucket", "resized"),
    [
        ((1000, 700), (576, 384), (576, 403)),  # too large: shrunk to about 512^2, width rounded
        ((1000, 600), (640, 384), (640, 384)),
        ((4000, 3000), (512, 384), (512, 384)),
        ((300, 200), (256, 192), (300, 200)),  # small: never scaled up, only cropped
    ],
)
def test_bucket_no_upscale_makes_per_image_buckets(size, bucket, resized):
    rules = BucketRules(bucketed(bucket_no_upscale=True))
    assert rules.predefined == []
    choice = rules.choose(size)
    assert (choice.bucket, choice.resized_size) == (bucket, resized)


def test_bucket_no_upscale_refuses_an_image_smaller_than_a_step():
    with pytest.raises(DatasetError, match="tiny.png: 40x300 is smaller than bucket_reso_steps"):
        BucketRules(bucketed(bucket_no_upscale=True)).choose((40, 300), source="tiny.png")


def test_without_bucketing_there_is_one_bucket_the_resolution():
    rules = BucketRules(DatasetSpec(resolution=(512, 768), bucket_no_upscale=True))
    assert rules.predefined == [(512, 768)]
    for size in [(100, 100), (2000, 1000), (512, 768)]:
        assert rules.choose(size).bucket == (512, 768)
    assert rules.choose((1000, 1000)).resized_size == (768, 768)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"min_bucket_reso": 640}, "min_bucket_reso \\(640\\) must be equal or less"),
        ({"max_bucket_reso": 256}, "max_bucket_reso \\(256\\) must be equal or greater"),
        ({"bucket_reso_steps": 0}, "bucket_reso_steps = 0"),
        ({"resolution": (500, 500)}, "multiples of 8"),
    ],
)
def test_impossible_bucket_settings_are_user_errors(settings, message):
    with pytest.raises(DatasetError, match=message):
        BucketRules(bucketed(where="dataset.toml: datasets[0]", **settings))


def test_bucket_steps_must_suit_the_model():
    spec = bucketed(bucket_reso_steps=32)
    check_bucket_reso_steps(spec, "sdxl")
    with pytest.raises(DatasetError, match="divisible by 64"):
        check_bucket_reso_steps(spec, "sd1")


def test_resize_and_crop_scales_to_cover_then_cuts_the_centre():
    image = Image.new("RGB", (1200, 800), (10, 20, 30))
    out, (top, left), original = resize_and_crop(image, (640, 384), False, random.Random(0))
    assert out.size == (640, 384) and original == (1200, 800)
    assert (top, left) == ((427 - 384) // 2, 0)


def test_random_crop_moves_the_cut_within_the_spare_pixels():
    image = Image.new("RGB", (1200, 800))
    offsets = {
        resize_and_crop(image, (640, 384), True, random.Random(seed))[1] for seed in range(40)
    }
    assert len(offsets) > 5
    assert all(0 <= top <= 427 - 384 and left == 0 for top, left in offsets)
    again = resize_and_crop(image, (640, 384), True, random.Random(7))[1]
    assert again == resize_and_crop(image, (640, 384), True, random.Random(7))[1]


def test_shrinking_averages_areas_like_inter_area():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    out, _, _ = resize_and_crop(Image.fromarray(pixels), (48, 32), False, random.Random(0))
    block_means = pixels.reshape(32, 2, 48, 2, 3).astype(float).mean(axis=(1, 3))
    difference = np.abs(np.asarray(out, dtype=float) - block_means)
    assert difference.max() <= 1.0  # PIL rounds in fixed point; LANCZOS would be ~60 off


def test_sdxl_crop_numbers_are_sd_scripts_fitted_box():
    # sd-scripts reports where the image would sit fitted inside the bucket, not the real cut
    # (the real cut of 1200x800 into 640x384 is 21 rows off the top, none on the left).
    ltrb = sdxl_crop_ltrb((640, 384), (1200, 800))
    assert ltrb == (32.0, 0.0, 608.0, 384.0)
    assert sdxl_crop_top_left(ltrb, (640, 384), flipped=False) == (0, 32)
    assert sdxl_crop_top_left(ltrb, (640, 384), flipped=True) == (0, 32)
    tall = sdxl_crop_ltrb((320, 768), (333, 777))
    assert tall[:3] == (0.0, 10.0, 320.0) and tall[3] == pytest.approx(756.6667, abs=1e-3)
    assert sdxl_crop_top_left(tall, (320, 768), flipped=True) == (10, 0)


def test_bucket_histogram_counts_images_per_bucket():
    sizes = [(1200, 800), (1500, 1000), (800, 1200), (512, 512), (64, 64)]
    assert bucket_histogram(sizes, bucketed()) == {(384, 640): 1, (512, 512): 2, (640, 384): 2}
