"""The demo models load in diffusers' own single-file loader, rebuild byte-identically, and
come with a usable toy dataset."""

from __future__ import annotations

import hashlib
import shutil
import socket
from pathlib import Path

import pytest
import torch
from PIL import Image

from ti_core.errors import TiError
from ti_core.models.demo import make_demo
from ti_core.models.demo_dataset import DEMO_TOKEN
from ti_core.models.tokenizer import load_tokenizer

FAMILIES = ("sd1", "sd2", "sdxl")
ARCHITECTURES = {
    "sd1": ("stable-diffusion-v1", "epsilon"),
    "sd2": ("stable-diffusion-v2-768-v", "v"),
    "sdxl": ("stable-diffusion-xl-v1-base", "epsilon"),
}


@pytest.fixture(scope="module", autouse=True)
def no_network():
    def refuse(*args, **kwargs):
        raise OSError("tests must not touch the network")

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(socket.socket, "connect", refuse)
        yield


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory, no_network) -> Path:
    root = tmp_path_factory.mktemp("demo")
    for family in FAMILIES:
        make_demo(root / family, family)
    return root


def pipeline_class(family: str):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline


@pytest.mark.parametrize("family", FAMILIES)
def test_single_file_loads_in_diffusers_to_the_folder_weights(demo_root, tmp_path, family):
    out = demo_root / family
    # Configs only: with weights beside them, diffusers silently takes a text encoder it
    # does not find in the single file from the folder instead, and the test would pass.
    config_dir = tmp_path / "config"
    shutil.copytree(out / "model", config_dir, ignore=shutil.ignore_patterns("*.safetensors"))

    loader = pipeline_class(family)
    folder = loader.from_pretrained(out / "model", local_files_only=True)
    single = loader.from_single_file(
        str(out / "model.safetensors"), config=str(config_dir), local_files_only=True
    )

    components = ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if family == "sdxl" else [])
    for name in components:
        expected = getattr(folder, name).state_dict()
        loaded = getattr(single, name).state_dict()
        assert loaded.keys() == expected.keys(), name
        different = [key for key in expected if not torch.equal(loaded[key], expected[key])]
        assert different == [], f"{name}: {len(different)} tensors differ, e.g. {different[:3]}"
    assert single.scheduler.config.prediction_type == folder.scheduler.config.prediction_type


@pytest.mark.parametrize("family", FAMILIES)
def test_single_file_says_what_it_is(demo_root, family):
    from ti_core.models.checkpoint_info import read_safetensors_header

    keys, metadata = read_safetensors_header(demo_root / family / "model.safetensors")
    architecture, prediction_type = ARCHITECTURES[family]
    assert metadata["modelspec.sai_model_spec"] == "1.0.0"
    assert metadata["modelspec.architecture"] == architecture
    assert metadata["modelspec.prediction_type"] == prediction_type
    assert metadata["modelspec.title"] == f"ti-trainer demo {family}"
    assert metadata["modelspec.resolution"] == "64x64"
    assert any(key.startswith("model.diffusion_model.output_blocks.") for key in keys)


def test_rebuilding_gives_identical_bytes(demo_root, tmp_path):
    for family in FAMILIES:
        rebuilt = make_demo(tmp_path / family, family)
        assert file_hashes(rebuilt) == file_hashes(demo_root / family), family
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FAMILIES)  # no staging left


def test_existing_demo_is_reused_and_other_folders_are_refused(demo_root, tmp_path):
    before = file_hashes(demo_root / "sd1")
    assert make_demo(demo_root / "sd1", "sd1") == demo_root / "sd1"
    assert file_hashes(demo_root / "sd1") == before

    precious = tmp_path / "my-photos"
    precious.mkdir()
    (precious / "holiday.png").write_bytes(b"not a demo")
    with pytest.raises(TiError, match="not a demo folder"):
        make_demo(precious, "sd1", force=True)
    assert (precious / "holiday.png").read_bytes() == b"not a demo"


@pytest.mark.parametrize("family", FAMILIES)
def test_dataset_has_captioned_toy_images(demo_root, family):

    image_dir = demo_root / family / "dataset" / f"10_{DEMO_TOKEN} toy"
    images = sorted(image_dir.glob("*.png"))
    assert len(images) >= 20
    for image_path in images:
        with Image.open(image_path) as image:
            assert image.size == (64, 64)
        caption = image_path.with_suffix(".txt").read_text(encoding="utf-8")
        assert DEMO_TOKEN in caption.split(), caption

    # The token must be new to the tokenizer, or there is nothing to learn.
    tokenizer = load_tokenizer()
    assert len(tokenizer.tokenize(DEMO_TOKEN)) > 1


def file_hashes(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }
