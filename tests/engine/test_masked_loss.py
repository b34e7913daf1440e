"""Loss masks (sd-scripts' alpha_mask, masked_loss + conditioning_data_dir) on the demo model: a
pixel weighed 0 adds nothing to the loss, the mask follows the image through crop, flip and
the latent cache, and the mistakes a user can make are said before any model work."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ti_core.training.losses as losses_module
from ti_core.cli.main import main
from ti_core.config.run_config import Config
from ti_core.data.batches import EpochBatches
from ti_core.data.dataset_toml import load_dataset_config
from ti_core.data.latents import MASK_FIELD, cache_latents, npz_path
from ti_core.data.run_data import dataset_specs, train_images
from ti_core.errors import ConfigError, DatasetError
from ti_core.training.preflight import preflight

SEED = 1234
SIZE = 64  # pixels: 8x8 latents, so half the image is 4 whole latent columns
RED, WHITE = (220, 30, 30), (255, 255, 255)
FOLDER = "1_demotoy toy"


@dataclasses.dataclass
class Demo:
    model: object
    precision: object
    scheduler: object


@pytest.fixture(scope="module")
def demo() -> Demo:
    from ti_core.embeddings.specs import embedding_specs
    from ti_core.embeddings.tokens import add_embeddings, text_parts
    from ti_core.models.loading import load_model
    from ti_core.training.diffusion import training_scheduler
    from ti_core.training.setup import choose_precision, prepare_model

    config = run_config("unused")
    loaded = load_model("demo:sd1")
    tokenizers, encoders = text_parts(loaded.pipeline)
    embeddings = embedding_specs(config)
    placeholders = add_embeddings(tokenizers, encoders, embeddings)
    precision = choose_precision("no", torch.device("cpu"))
    model = prepare_model(loaded, embeddings, placeholders, tokenizers, encoders, config, precision)
    scheduler = training_scheduler(loaded.pipeline.scheduler, loaded.v_parameterization, False)
    return Demo(model, precision, scheduler)


def run_config(train_data_dir: str, **dataset_options) -> Config:
    config = Config()
    config.dataset = dataclasses.replace(
        config.dataset, train_data_dir=str(train_data_dir), caption_extension=".txt",
        resolution=str(SIZE), **dataset_options,
    )  # fmt: skip
    config.token.token_string, config.token.init_word = "demotoy", "toy"
    config.model.pretrained_model_name_or_path = "demo:sd1"
    return config


def picture(alpha_columns: slice | None = None, width: int = SIZE, red: tuple = RED) -> Image.Image:
    """Red where opaque, the rest transparent (alpha 0); alpha_columns=None: opaque RGB."""
    if alpha_columns is None:
        return Image.new("RGB", (width, SIZE), red)
    pixels = np.zeros((SIZE, width, 4), dtype=np.uint8)
    pixels[:, alpha_columns] = (*red, 255)
    return Image.fromarray(pixels, "RGBA")


def grey_mask(learned_columns: slice, width: int = SIZE) -> Image.Image:
    weights = np.zeros((SIZE, width), dtype=np.uint8)
    weights[:, learned_columns] = 255
    return Image.fromarray(weights, "L")


def dataset_with(root: Path, images: dict[str, Image.Image]) -> Path:
    """train_data_dir with one N_name folder of these images, each with a caption."""
    folder = root / "data" / FOLDER
    folder.mkdir(parents=True)
    for name, image in images.items():
        image.save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text("a photo of demotoy toy\n", encoding="utf-8")
    return root / "data"


def first_batch(config: Config, demo: Demo) -> dict:
    from ti_core.training.setup import build_batches

    batches, _ = build_batches(config, dataset_specs(config), demo.model, demo.precision)
    return batches[0]


def step_loss(config: Config, demo: Demo, batch: dict, monkeypatch=None) -> tuple[float, list]:
    """The step's loss, and each element's loss before the mask (pixel_losses' output)."""
    from ti_core.training.loop import step_loss as loop_step_loss

    seen: list[torch.Tensor] = []
    if monkeypatch is not None:
        original = losses_module.pixel_losses

        def recording(*args, **kwargs):
            seen.append(original(*args, **kwargs))
            return seen[-1]

        monkeypatch.setattr(losses_module, "pixel_losses", recording)
    with torch.no_grad():
        loss = loop_step_loss(config, demo.model, batch, demo.precision, demo.scheduler, SEED)
    return float(loss), seen


def test_a_fully_transparent_image_gives_loss_zero(tmp_path, demo):
    data = dataset_with(tmp_path, {"ghost": picture(alpha_columns=slice(0, 0))})
    masked = first_batch(run_config(data, alpha_mask=True), demo)
    assert masked["loss_masks"].shape == (1, SIZE, SIZE) and masked["loss_masks"].max() == 0
    assert step_loss(run_config(data, alpha_mask=True), demo, masked)[0] == 0.0
    plain = first_batch(run_config(data), demo)
    assert "loss_masks" not in plain and step_loss(run_config(data), demo, plain)[0] > 0


def test_an_image_without_alpha_weighs_one_everywhere(tmp_path, demo):
    data = dataset_with(tmp_path, {"opaque": picture()})
    masked = first_batch(run_config(data, alpha_mask=True), demo)
    assert torch.equal(masked["loss_masks"], torch.ones(1, SIZE, SIZE))
    plain_loss = step_loss(run_config(data), demo, first_batch(run_config(data), demo))[0]
    assert step_loss(run_config(data, alpha_mask=True), demo, masked)[0] == plain_loss


def test_half_transparent_counts_only_the_opaque_half_on_the_same_noise(
    tmp_path, demo, monkeypatch
):
    data = dataset_with(tmp_path, {"half": picture(alpha_columns=slice(SIZE // 2, SIZE))})
    plain_config, masked_config = run_config(data), run_config(data, alpha_mask=True)
    _, (elements,) = step_loss(plain_config, demo, first_batch(plain_config, demo), monkeypatch)
    masked, _ = step_loss(masked_config, demo, first_batch(masked_config, demo))
    # sd-scripts' mean still divides by every element: the right half's sum over all of them.
    right_half = float(elements[..., 4:].sum() / elements.numel())
    assert masked == pytest.approx(right_half, rel=1e-5)
    assert masked != pytest.approx(float(elements.mean()), rel=1e-3)


def test_a_conditioning_data_dir_mask_weighs_the_loss_the_same_way(tmp_path, demo, monkeypatch):
    data = dataset_with(tmp_path, {"cat": picture()})
    masks = tmp_path / "masks"
    masks.mkdir()
    grey_mask(slice(0, SIZE // 2)).save(masks / "cat.png")  # the left half is learned
    plain_config = run_config(data)
    masked_config = run_config(data, conditioning_data_dir=str(masks))
    masked_config.training.masked_loss = True
    _, (elements,) = step_loss(plain_config, demo, first_batch(plain_config, demo), monkeypatch)
    masked, _ = step_loss(masked_config, demo, first_batch(masked_config, demo))
    assert masked == pytest.approx(float(elements[..., :4].sum() / elements.numel()), rel=1e-5)


def assert_mask_on_the_red(batch: dict) -> None:
    """Weight 1 exactly where the picture is red, 0 where it is white (transparent)."""
    for pixels, mask in zip(batch["pixels"], batch["loss_masks"], strict=True):
        red = (pixels[1] < 0).numpy()  # green channel: 30 in red, 255 in white
        assert red.any() and not red.all()
        assert np.array_equal(mask.numpy() == 1.0, red), "the mask left its image"


def test_the_mask_follows_the_flip(tmp_path, demo):
    data = dataset_with(tmp_path, {"left": picture(alpha_columns=slice(0, SIZE // 2))})
    config = run_config(data, alpha_mask=True, flip_aug=True)
    datasets = train_images(dataset_specs(config))
    batches = EpochBatches(datasets, lambda entry, epoch, rng: entry.caption, seed=3)
    seen = set()
    for epoch in range(1, 9):
        batches.set_epoch(epoch)
        batch = batches[0]
        left_learned = bool(batch["loss_masks"][0, 0, 0] == 1)
        assert left_learned != batch["flipped"][0]  # mirrored: the right half is learned
        assert_mask_on_the_red(batch)
        seen.add(batch["flipped"][0])
    assert seen == {True, False}


def test_the_mask_follows_a_random_crop(tmp_path, demo):
    wide = SIZE * 2  # cropped to 64 at a random place
    data = dataset_with(tmp_path, {"stripe": picture(alpha_columns=slice(40, 80), width=wide)})
    config = run_config(data, alpha_mask=True, random_crop=True)
    datasets = train_images(dataset_specs(config))
    batches = EpochBatches(datasets, lambda entry, epoch, rng: entry.caption, seed=5)
    where = set()
    for epoch in range(1, 7):
        batches.set_epoch(epoch)
        batch = batches[0]
        assert_mask_on_the_red(batch)
        where.add(int(batch["loss_masks"][0].argmax(dim=1)[0]))
    assert len(where) > 1  # the crop did move


def test_cached_latents_carry_the_mask_in_memory_and_on_disk(tmp_path, demo):
    data = dataset_with(tmp_path, {f"{i}": picture(alpha_columns=slice(0, 8 * i)) for i in (1, 5)})
    plain = run_config(data, flip_aug=True)
    masked = run_config(data, flip_aug=True, alpha_mask=True)
    vae = demo.model.loaded.pipeline.vae

    def encodes(config: Config, **options) -> tuple[int, object, list]:
        datasets = train_images(dataset_specs(config))
        images = [image for _, found in datasets for image in found]
        counted = []
        original = vae.encode
        vae.encode = lambda pixels, *a, **k: (
            counted.append(len(pixels)) or original(pixels, *a, **k)
        )
        try:
            cache = cache_latents(vae, images, vae_batch_size=2, **options)
        finally:
            del vae.encode
        return sum(counted), cache, datasets

    def make(datasets, cache):
        return EpochBatches(datasets, lambda entry, epoch, rng: entry.caption, latent_cache=cache)

    _, memory, datasets = encodes(masked)
    from_pixels = make(datasets, None)
    for to_disk in (False, True):
        cache = memory if not to_disk else encodes(masked, to_disk=True)[1]
        for epoch in (1, 2, 3):
            from_cache = make(datasets, cache)
            from_cache.set_epoch(epoch), from_pixels.set_epoch(epoch)
            for cached, loaded in zip(from_cache, from_pixels, strict=True):
                assert cached["flipped"] == loaded["flipped"]
                assert torch.equal(cached["loss_masks"], loaded["loss_masks"])
    image = datasets[0][1][0]
    for path in data.rglob("*.npz"):
        path.unlink()
    assert encodes(plain, to_disk=True)[0] == 4  # two images, each also mirrored
    with np.load(npz_path(image.path)) as npz:
        assert MASK_FIELD not in npz
    assert encodes(masked, to_disk=True)[0] == 4  # written without masks: not reused
    assert encodes(masked, to_disk=True)[0] == 0  # with them: reused
    assert encodes(plain, to_disk=True)[0] == 0  # a mask more does no harm
    with np.load(npz_path(image.path)) as npz:
        assert npz[MASK_FIELD].shape == (SIZE, SIZE)


def test_a_missing_mask_names_the_image_and_the_folder(tmp_path):
    data = dataset_with(tmp_path, {"cat": picture(), "dog": picture(red=(200, 40, 40))})
    masks = tmp_path / "masks"
    masks.mkdir()
    grey_mask(slice(0, 8)).save(masks / "cat.png")
    config = run_config(data, conditioning_data_dir=str(masks))
    config.saving.output_dir = str(tmp_path / "run")
    with pytest.raises(ConfigError, match="masked_loss is off"):
        preflight(config)
    config.training.masked_loss = True
    with pytest.raises(DatasetError) as error:
        preflight(config)
    text = str(error.value)
    assert "no loss mask" in text and "dog.png" in text and str(masks / "dog") in text
    assert "cat.png" not in text


def test_dataset_toml_keys_and_a_two_step_run(tmp_path):
    data = dataset_with(tmp_path, {"cat": picture(alpha_columns=slice(0, 32)), "dog": picture()})
    masks = tmp_path / "masks"
    (masks / "sub").mkdir(parents=True)
    grey_mask(slice(0, 32)).save(masks / "sub" / "dog.png")
    toml = tmp_path / "dataset.toml"
    folder = (data / FOLDER).as_posix()
    toml.write_text(
        f'[general]\nalpha_mask = true\ncaption_extension = ".txt"\nresolution = {SIZE}\n'
        f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{folder}"\n'
        f'conditioning_data_dir = "{(masks / "sub").as_posix()}"\n'
    )
    (subset,) = load_dataset_config(toml)[0].subsets
    assert subset.alpha_mask and subset.conditioning_data_dir.endswith("sub")
    toml.with_name("bad.toml").write_text(
        toml.read_text().replace("alpha_mask = true", f'conditioning_data_dir = "{folder}"')
    )
    with pytest.raises(DatasetError, match="belongs in a"):
        load_dataset_config(toml.with_name("bad.toml"))
    with pytest.raises(DatasetError, match="no loss mask"):  # cat.png has none in sub/
        preflight_of(toml, tmp_path)
    grey_mask(slice(32, 64)).save(masks / "sub" / "cat.png")
    run_dir = tmp_path / "run"
    code = main(["train", "--dataset_config", str(toml), "--masked_loss",
                 "--pretrained_model_name_or_path", "demo:sd1", "--token_string", "demotoy",
                 "--init_word", "toy", "--output_dir", str(run_dir), "--max_train_steps", "2",
                 "--cache_latents"])  # fmt: skip
    assert code == 0 and list(run_dir.glob("*.safetensors"))
    config = run_config(data, conditioning_data_dir=str(masks), dataset_config=str(toml))
    with pytest.raises(ConfigError, match="in each"):  # the run's is for train_data_dir
        preflight(config)


def preflight_of(toml: Path, tmp_path: Path):
    config = run_config("", dataset_config=str(toml))
    config.training.masked_loss, config.saving.output_dir = True, str(tmp_path / "run")
    return preflight(config)


def test_a_folder_run_finds_masks_in_a_subfolder_named_like_the_image_folder(tmp_path):
    data = dataset_with(tmp_path, {"cat": picture()})
    masks = tmp_path / "masks"
    (masks / FOLDER).mkdir(parents=True)
    grey_mask(slice(0, 8)).save(masks / FOLDER / "cat.png")
    config = run_config(data, conditioning_data_dir=str(masks))
    config.training.masked_loss, config.saving.output_dir = True, str(tmp_path / "run")
    specs, report = preflight(config)
    assert report.entries[0][0].mask_path == masks / FOLDER / "cat.png"
