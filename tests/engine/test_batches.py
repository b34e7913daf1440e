"""Epoch batches on the demo dataset: buckets never mix, repeats and batch size give the count
sd-scripts gives, a seed fixes everything, flips mirror, and SDXL's size fields are there."""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ti_core.data.batches import (
    EpochBatches,
    balanced_repeats,
    make_loader,
    prepare_images,
    sdxl_time_ids,
)
from ti_core.data.pixels import color_augment, load_pixels, shift_hue
from ti_core.data.spec import DatasetSpec, ImageEntry, SubsetSpec
from ti_core.errors import DatasetError
from ti_core.models.demo_dataset import demo_dataset


def caption_of(entry: ImageEntry, epoch: int, rng: random.Random) -> str:
    return f"{entry.caption} @{epoch}"


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory) -> Path:
    return demo_dataset(tmp_path_factory.mktemp("dataset"), num_images=12, repeats=3)


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory, demo_folder) -> Path:
    """The demo's 64x64 images plus wide (128x64) and tall (64x128) versions of them."""
    folder = tmp_path_factory.mktemp("mixed")
    for index, path in enumerate(sorted(demo_folder.glob("*.png"))[:8]):
        image = Image.open(path)
        image.save(folder / f"square{index}.png")
        image.resize((128, 64)).save(folder / f"wide{index}.png")
        image.resize((64, 128)).save(folder / f"tall{index}.png")
    return folder


def entries(folder: Path, subset: SubsetSpec) -> list[ImageEntry]:
    return [ImageEntry(path, path.stem, "file", subset) for path in sorted(folder.glob("*.png"))]


def batches_of(folder, spec: DatasetSpec, subset: SubsetSpec, **options) -> EpochBatches:
    spec.subsets = [subset]
    images = prepare_images(entries(folder, subset), spec)
    return EpochBatches([(spec, images)], caption_of, **options)


def mixed_spec(batch_size=3) -> DatasetSpec:
    # Steps of 16 make buckets 48x80, 64x64 and 80x48 (and others) around 64x64.
    return DatasetSpec(
        resolution=(64, 64),
        batch_size=batch_size,
        enable_bucket=True,
        min_bucket_reso=32,
        max_bucket_reso=128,
        bucket_reso_steps=16,
    )


def test_batches_never_mix_buckets(mixed_folder):
    batches = batches_of(mixed_folder, mixed_spec(), SubsetSpec(num_repeats=2))
    seen = Counter()
    for batch in batches:
        width, height = batch["bucket"]
        assert batch["pixels"].shape[1:] == (3, height, width)
        for path in batch["paths"]:
            kind = Path(path).stem.rstrip("0123456789")
            seen[kind, batch["bucket"]] += 1
    assert seen == {("square", (64, 64)): 16, ("wide", (80, 48)): 16, ("tall", (48, 80)): 16}


def test_batch_count_is_images_times_repeats_over_batch_size(demo_folder, mixed_folder):
    square = batches_of(
        demo_folder, DatasetSpec(resolution=(64, 64), batch_size=4), SubsetSpec(num_repeats=3)
    )
    assert len(square) == 12 * 3 // 4
    assert Counter(path for batch in square for path in batch["paths"]) == {
        str(path): 3 for path in sorted(demo_folder.glob("*.png"))
    }
    # Per bucket, the last batch may be short: 3 buckets x ceil(8 * 2 / 3).
    assert len(batches_of(mixed_folder, mixed_spec(3), SubsetSpec(num_repeats=2))) == 3 * math.ceil(
        16 / 3
    )


def test_a_seed_fixes_the_order_and_every_augmentation(mixed_folder):
    subset = SubsetSpec(num_repeats=2, flip_aug=True, color_aug=True, random_crop=True)

    def run(seed: int, epoch: int) -> list:
        batches = batches_of(mixed_folder, mixed_spec(), subset, seed=seed)
        batches.set_epoch(epoch)
        return [(batch["paths"], batch["flipped"], batch["pixels"]) for batch in batches]

    first, again = run(seed=5, epoch=2), run(seed=5, epoch=2)
    assert [b[:2] for b in first] == [b[:2] for b in again]
    assert all(torch.equal(a[2], b[2]) for a, b in zip(first, again, strict=True))
    assert [b[0] for b in run(seed=6, epoch=2)] != [b[0] for b in first]
    assert [b[0] for b in run(seed=5, epoch=3)] != [b[0] for b in first]


def test_flip_aug_mirrors_the_pixels(demo_folder):
    spec = DatasetSpec(resolution=(64, 64), batch_size=4)
    image = prepare_images(entries(demo_folder, SubsetSpec(flip_aug=True)), spec)[0]
    plain, _ = load_pixels(image, False, random.Random(0))
    mirrored, _ = load_pixels(image, True, random.Random(0))
    assert not torch.equal(plain, mirrored)
    assert torch.equal(mirrored, torch.flip(plain, dims=[2]))

    batches = batches_of(demo_folder, spec, SubsetSpec(num_repeats=3, flip_aug=True))
    flips = Counter(flag for batch in batches for flag in batch["flipped"])
    assert flips[True] > 5 and flips[False] > 5


def test_pixels_are_the_image_in_minus_one_to_one(demo_folder):
    spec = DatasetSpec(resolution=(64, 64), batch_size=2)
    batch = batches_of(demo_folder, spec, SubsetSpec())[0]
    first = np.asarray(Image.open(batch["paths"][0]).convert("RGB"), dtype=np.float32)
    expected = torch.from_numpy(first / 127.5 - 1.0).permute(2, 0, 1)
    assert torch.allclose(batch["pixels"][0], expected, atol=1e-6)
    assert batch["pixels"].dtype == torch.float32


def test_sdxl_size_fields_and_time_ids(mixed_folder):
    batches = batches_of(mixed_folder, mixed_spec(batch_size=2), SubsetSpec(flip_aug=True))
    wide = next(batch for batch in batches if batch["bucket"] == (80, 48))
    assert wide["original_size"].tolist() == [[64, 128]] * 2  # (height, width)
    assert wide["target_size"].tolist() == [[48, 80]] * 2
    # sd-scripts' fitted box: 128x64 fitted into 80x48 is 80x40, 4 rows from the top.
    assert wide["crop_top_left"].tolist() == [[4, 0]] * 2
    assert sdxl_time_ids(wide).tolist() == [[64.0, 128.0, 4.0, 0.0, 48.0, 80.0]] * 2


def test_captions_loss_weights_and_reg_flags(demo_folder, mixed_folder):
    train, reg = SubsetSpec(num_repeats=1), SubsetSpec(num_repeats=1, is_reg=True)
    spec = DatasetSpec(resolution=(64, 64), batch_size=4, subsets=[train, reg])
    images = prepare_images(entries(demo_folder, train) + entries(mixed_folder, reg)[:12], spec)
    batches = EpochBatches([(spec, images)], caption_of, prior_loss_weight=0.25)
    batches.set_epoch(7)
    for batch in batches:
        expected = [0.25 if reg else 1.0 for reg in batch["is_reg"].tolist()]
        assert batch["loss_weights"].tolist() == expected
        assert all(caption.endswith(" @7") for caption in batch["captions"])
    assert sum(batch["is_reg"].sum().item() for batch in batches) == 12


def test_regularization_images_are_balanced_to_the_training_images():
    def entry(subset: SubsetSpec) -> ImageEntry:
        return ImageEntry(Path("x.png"), "", "file", subset)

    train, reg = SubsetSpec(num_repeats=2), SubsetSpec(num_repeats=1, is_reg=True)
    # 3 training images x 2 = 6: four reg images once each, then one more pass adds two.
    assert balanced_repeats([entry(train)] * 3 + [entry(reg)] * 4) == [2, 2, 2, 2, 2, 1, 1]
    # 1 x 2 = 2: only the first two reg images are used at all.
    assert balanced_repeats([entry(train)] + [entry(reg)] * 4) == [2, 1, 1, 0, 0]
    assert balanced_repeats([entry(SubsetSpec(num_repeats=0))]) == [0]


def test_an_empty_dataset_is_a_user_error(demo_folder):
    spec = DatasetSpec(resolution=(64, 64))
    images = prepare_images(entries(demo_folder, SubsetSpec(num_repeats=0)), spec)
    with pytest.raises(DatasetError, match="No images to train on"):
        EpochBatches([(spec, images)], caption_of)


def test_a_loader_worker_makes_the_same_batches(demo_folder):
    batches = batches_of(
        demo_folder, DatasetSpec(resolution=(64, 64), batch_size=6), SubsetSpec(flip_aug=True)
    )
    batches.set_epoch(3)
    in_process = [(b["paths"], b["pixels"]) for b in make_loader(batches, num_workers=0)]
    from_worker = list(make_loader(batches, num_workers=1))
    assert all(b["bucket"] == (64, 64) for b in from_worker)  # still a tuple
    in_worker = [(b["paths"], b["pixels"]) for b in from_worker]
    assert [paths for paths, _ in in_worker] == [paths for paths, _ in in_process]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(in_worker, in_process, strict=True))


def test_hue_shift_turns_colours_and_keeps_grays():
    pixels = np.array([[[255, 0, 0], [0, 255, 0], [90, 90, 90]]], dtype=np.uint8)
    assert shift_hue(pixels, 120.0).tolist() == [[[0, 255, 0], [0, 0, 255], [90, 90, 90]]]
    assert shift_hue(pixels, 0.0).tolist() == pixels.tolist()


def test_color_aug_changes_about_a_third_of_the_images():
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    changed = sum(
        not np.array_equal(color_augment(pixels, random.Random(seed)), pixels)
        for seed in range(300)
    )
    assert 60 < changed < 140
