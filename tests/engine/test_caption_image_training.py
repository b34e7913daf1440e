"""sd-scripts' caption and image options where they change what trains: wildcard picks per
epoch, the tag warm-up per step (and in --debug_dataset), the resize filter, the face crop,
dataset_repeats, skip_cache_check, persistent loader workers, and a run using them."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ti_core.cli.main import main
from ti_core.config.run_config import Config
from ti_core.data.batches import BatchLoader, EpochBatches, prepare_images
from ti_core.data.latents import cache_latents, npz_path
from ti_core.data.pixels import load_pixels
from ti_core.data.run_data import caption_maker, dataset_specs, debug_dataset
from ti_core.data.sources import datasets_from_args, discover_images
from ti_core.data.spec import DatasetSpec, ImageEntry, SubsetSpec
from ti_core.embeddings.files import read_embedding
from ti_core.errors import DatasetError
from ti_core.models.demo import demo_dir
from ti_core.models.demo_dataset import demo_dataset
from ti_core.models.loading import load_vae
from ti_core.models.tokenizer import load_tokenizer

TAGS = "demotoy, orange, toy, blue background"
COLOURS = ("red", "blue", "green", "orange")


def tagged_folder(tmp_path: Path, captions: list[str]) -> Path:
    """<tmp>/train/1_demotoy toy/ with one 64-px image per caption."""
    folder = tmp_path / "train" / "1_demotoy toy"
    folder.mkdir(parents=True)
    for index, text in enumerate(captions):
        Image.new("RGB", (64, 64), (index * 50, 90, 160)).save(folder / f"{index:03d}.png")
        (folder / f"{index:03d}.txt").write_text(text, encoding="utf-8")
    return folder


def run_config(folder: Path, **dataset_options) -> Config:
    config = Config()
    config.token.token_string = "demotoy"
    config.dataset.train_data_dir, config.dataset.caption_extension = str(folder.parent), ".txt"
    config.dataset.resolution = "64"
    for name, value in dataset_options.items():
        setattr(config.dataset, name, value)
    return config


def epoch_batches(config: Config) -> EpochBatches:
    specs = dataset_specs(config)
    images = [(spec, prepare_images(discover_images(spec)[0], spec)) for spec in specs]
    return EpochBatches(images, caption_maker(config, lambda text: text), seed=config.training.seed)


def captions_by_epoch(batches: EpochBatches, epochs: int) -> list[list[str]]:
    seen = []
    for epoch in range(1, epochs + 1):
        batches.set_epoch(epoch)
        seen.append([text for batch in batches for text in batch["captions"]])
    return seen


def test_wildcard_picks_change_from_epoch_to_epoch_and_repeat_with_the_seed(tmp_path):
    folder = tagged_folder(tmp_path, ["demotoy {red|blue|green|orange} toy"])
    config = run_config(folder, enable_wildcard=True)
    picks = [captions[0] for captions in captions_by_epoch(epoch_batches(config), 8)]
    assert all(pick.split()[1] in COLOURS and pick.endswith(" toy") for pick in picks)
    assert len(set(picks)) > 1
    assert picks == [c[0] for c in captions_by_epoch(epoch_batches(config), 8)]  # same seed
    config.training.seed = 1
    assert picks != [c[0] for c in captions_by_epoch(epoch_batches(config), 8)]


def test_the_tag_warm_up_follows_the_step_each_batch_trains_at(tmp_path):
    folder = tagged_folder(tmp_path, [TAGS] * 4)
    config = run_config(folder, token_warmup_step=4.0)
    batches = epoch_batches(config)
    assert len(batches) == 4  # batch size 1
    batches.count_steps(accumulation=1, max_train_steps=8)
    first, second = captions_by_epoch(batches, 2)
    assert [len(text.split(", ")) for text in first] == [1, 1, 2, 3]  # steps 0-3
    assert second == [TAGS] * 4  # steps 4-7: past the warm-up
    batches.count_steps(accumulation=2, max_train_steps=4)  # two batches a step
    assert [len(text.split(", ")) for text in captions_by_epoch(batches, 1)[0]] == [1, 1, 1, 1]
    # batches that do not count steps (the validation loss) see whole captions
    assert captions_by_epoch(epoch_batches(config), 1)[0] == [TAGS] * 4
    # --debug_dataset shows the first steps' captions as training makes them
    specs = dataset_specs(config)
    lines = debug_dataset(config, specs, lambda text: text, load_tokenizer(), max_batches=2)
    assert [line.caption for line in lines] == ["demotoy", "demotoy"]


def noise_image(path: Path, size: tuple[int, int]) -> Path:
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def placed(path: Path, spec: DatasetSpec, **subset_options):
    subset = SubsetSpec(image_dir=str(path.parent), **subset_options)
    spec.subsets = [subset]
    [image] = prepare_images([ImageEntry(path, "demotoy", "file", subset)], spec)
    return image


def test_resize_interpolation_chooses_the_filter(tmp_path):
    source = noise_image(tmp_path / "noise.png", (100, 100))
    spec = DatasetSpec(resolution=(64, 64))
    pixels = {
        name: load_pixels(placed(source, spec, resize_interpolation=name), False, random.Random())[
            0
        ]
        for name in ("", "nearest", "lanczos", "bilinear", "area")
    }
    assert not torch.equal(pixels["nearest"], pixels["lanczos"])
    assert not torch.equal(pixels["bilinear"], pixels["lanczos"])
    assert torch.equal(pixels[""], pixels["area"])  # sd-scripts' default when shrinking
    # nearest only copies pixels: every colour it gives is one of the file's
    original = {tuple(rgb) for rgb in np.asarray(Image.open(source)).reshape(-1, 3).tolist()}
    resized = ((pixels["nearest"] + 1) * 127.5).round().to(torch.int64)
    assert {tuple(rgb) for rgb in resized.permute(1, 2, 0).reshape(-1, 3).tolist()} <= original


def face_width_and_centre(pixels: torch.Tensor) -> tuple[int, float]:
    """Width and centre of the white square in the middle row of a crop."""
    row = (pixels[0, pixels.shape[1] // 2] > 0).nonzero().flatten().tolist()
    return len(row), (row[0] + row[-1]) / 2


def test_face_crop_scales_the_face_into_the_range_and_crops_around_it(tmp_path):
    # a 64-px white "face" in the middle of a 256-px black picture, named as sd-scripts wants
    picture = Image.new("RGB", (256, 256))
    picture.paste((255, 255, 255), (96, 96, 160, 160))
    path = tmp_path / "portrait_128_128_64_64.png"
    picture.save(path)
    spec = DatasetSpec(resolution=(64, 64))
    image = placed(path, spec, face_crop_aug_range="2.0,4.0")
    assert image.face == (128, 128, 64, 64)
    widths = set()
    for seed in range(12):
        pixels, original_size = load_pixels(image, False, random.Random(seed))
        width, centre = face_width_and_centre(pixels)
        assert pixels.shape == (3, 64, 64) and original_size == (256, 256)
        assert 64 / 4 - 1 <= width <= 64 / 2 + 1  # the face is 1/4 to 1/2 of the crop
        assert abs(centre - 31.5) <= 4  # around the face, moved a little at random
        widths.add(width)
    assert len(widths) > 2  # a new scale each time
    fixed = placed(path, spec, face_crop_aug_range="3.0,3.0")
    crops = [load_pixels(fixed, False, random.Random(seed))[0] for seed in range(3)]
    assert all(torch.equal(crop, crops[0]) for crop in crops)  # one scale, no jitter
    assert abs(face_width_and_centre(crops[0])[0] - 64 / 3) <= 1
    # with buckets sd-scripts does not crop faces: nor do we
    buckets = DatasetSpec(resolution=(64, 64), enable_bucket=True, max_bucket_reso=256)
    buckets.min_bucket_reso = 64
    assert placed(path, buckets, face_crop_aug_range="2,4").face is None


def test_dataset_repeats_multiply_an_in_json_datasets_images_per_epoch(tmp_path):
    metadata = {}
    for index in range(3):
        Image.new("RGB", (64, 64), (index * 60, 0, 0)).save(tmp_path / f"{index}.png")
        metadata[str(index)] = {"caption": f"demotoy {index}"}
    (tmp_path / "meta.json").write_text(json.dumps(metadata), encoding="utf-8")
    counts = []
    for repeats in (1, 3):
        in_json = str(tmp_path / "meta.json")
        [spec] = datasets_from_args(train_data_dir=str(tmp_path), resolution="64",
                                    in_json=in_json, dataset_repeats=repeats)  # fmt: skip
        images = prepare_images(discover_images(spec)[0], spec)
        batches = EpochBatches([(spec, images)], lambda entry, epoch, rng: entry.caption)
        counts.append(sorted(path for batch in batches for path in batch["paths"]))
    assert len(counts[0]) == 3 and counts[1] == sorted(counts[0] * 3)


@pytest.fixture(scope="module")
def vae(demo_cache):
    return load_vae(str(demo_dir("sd1") / "model"), "sd1").eval()


def test_skip_cache_check_trusts_the_files_there_without_reading_them(tmp_path, vae):
    folder = demo_dataset(tmp_path / "dataset", num_images=2, repeats=1)
    paths = sorted(folder.glob("*.png"))

    def images(resolution=(64, 64)):
        subset = SubsetSpec(image_dir=str(folder))
        spec = DatasetSpec(resolution=resolution, subsets=[subset])
        return prepare_images([ImageEntry(p, "demotoy", "file", subset) for p in paths], spec)

    def stamps():
        return [npz_path(path).stat().st_mtime_ns for path in paths]

    cache_latents(vae, images(), to_disk=True)
    written = stamps()
    for path in paths:  # the images change (or seem to): their files are out of date now
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    cache = cache_latents(vae, images(), to_disk=True, skip_check=True)
    assert stamps() == written  # trusted as they are: nothing encoded again
    assert cache.get(images()[0], flipped=False)[0].shape == (4, 8, 8)
    # a file trusted for another size stops with a clear message, not a shape error
    bigger = images((128, 128))
    cache = cache_latents(vae, bigger, to_disk=True, skip_check=True)
    with pytest.raises(DatasetError, match="run once without skip_cache_check"):
        cache.get(bigger[0], flipped=False)
    cache_latents(vae, images(), to_disk=True)  # checked: the changed images are encoded again
    assert all(new != old for new, old in zip(stamps(), written, strict=True))


def caption_with_worker(entry: ImageEntry, epoch: int, rng: random.Random, **_) -> str:
    """A picklable caption maker that says which process made the caption."""
    return f"{entry.caption} #{rng.randint(0, 999)} @{os.getpid()}"


def test_persistent_workers_serve_every_epoch_with_the_batches_made_here(tmp_path):
    folder = demo_dataset(tmp_path / "dataset", num_images=4, repeats=1)
    subset = SubsetSpec(image_dir=str(folder), flip_aug=True)
    spec = DatasetSpec(resolution=(64, 64), batch_size=2, subsets=[subset])
    entries = [ImageEntry(p, p.stem, "file", subset) for p in sorted(folder.glob("*.png"))]
    batches = EpochBatches([(spec, prepare_images(entries, spec))], caption_with_worker, seed=5)

    def read(loader: BatchLoader, epochs=(1, 2)) -> tuple[list, set[str]]:
        made, workers = [], set()
        for epoch in epochs:
            batches.set_epoch(epoch)
            for index, batch in loader.epoch(epoch):
                texts = [text.rsplit(" @", 1) for text in batch["captions"]]
                workers |= {pid for _, pid in texts}
                made.append((epoch, index, [text for text, _ in texts], batch["pixels"]))
        return made, workers

    here, _ = read(BatchLoader(batches))
    persistent, persistent_workers = read(BatchLoader(batches, 1, persistent=True))
    fresh, fresh_workers = read(BatchLoader(batches, 1))
    for made in (persistent, fresh):
        assert [item[:3] for item in made] == [item[:3] for item in here]
        assert all(torch.equal(a[3], b[3]) for a, b in zip(made, here, strict=True))
    assert len(persistent_workers) == 1 and len(fresh_workers) == 2  # one process per epoch
    resumed, _ = read(BatchLoader(batches, 1, persistent=True), epochs=(2,))
    assert [item[:3] for item in resumed] == [item[:3] for item in here if item[0] == 2]


def test_a_run_with_these_options_trains_what_an_in_process_run_trains(tmp_path, demo_cache):
    demo_dataset(tmp_path / "train", num_images=2, repeats=1)
    single_file = demo_dir("sd1") / "model.safetensors"  # loads the shared tokenizer
    common = ["train", "--pretrained_model_name_or_path", str(single_file), "--resolution", "64",
              "--train_data_dir", str(tmp_path / "train"), "--caption_extension", ".txt",
              "--token_string", "demotoy", "--init_word", "toy", "--max_train_steps", "4",
              "--learning_rate", "0.05", "--token_warmup_step", "3", "--enable_wildcard",
              "--resize_interpolation", "bicubic"]  # fmt: skip
    assert main([*common, "--output_dir", str(tmp_path / "here")]) == 0
    tokenizers = tmp_path / "tokenizers"
    assert main([*common, "--output_dir", str(tmp_path / "workers"),
                 "--max_data_loader_n_workers", "1", "--persistent_data_loader_workers",
                 "--tokenizer_cache_dir", str(tokenizers)]) == 0  # fmt: skip
    here = read_embedding(tmp_path / "here" / "demotoy.safetensors").vectors[0]
    workers = read_embedding(tmp_path / "workers" / "demotoy.safetensors").vectors[0]
    assert torch.equal(here, workers)  # 2 epochs of 2 batches, the same however loaded
    assert (tokenizers / "openai_clip-vit-large-patch14" / "vocab.json").is_file()
