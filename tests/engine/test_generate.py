"""Images from a base model plus embedding files: every layout gives the same pixels as the
vectors themselves, other tools' files load, and mistakes are clear errors that leave the
Generator working."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from ti_core.cli.main import main
from ti_core.embeddings.inspect import format_report, inspect_embedding
from ti_core.embeddings.writers import convert_embedding, save_embedding
from ti_core.errors import TiError
from ti_core.generation.generator import Generator, save_images
from ti_core.generation.options import GenerateOptions

SMALL = {"width": 64, "height": 64, "steps": 2, "scale": 7.5}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> object:
    """The demo embedding after 2 training steps (kohya .safetensors, trigger 'demotoy')."""
    out = tmp_path_factory.mktemp("run")
    args = ["train", "--config", "presets/demo.toml", "--max_train_steps", "2"]
    assert main([*args, "--output_dir", str(out), "--sample_every_n_steps", "0"]) == 0
    return out / "demotoy.safetensors"


@pytest.fixture(scope="module")
def generator() -> Generator:
    return Generator("demo:sd1", device="cpu")


def pixels(generator: Generator, prompt: str = "a photo of demotoy", seed: int = 3) -> np.ndarray:
    ((image, settings),) = generator.generate(prompt=prompt, seed=seed, **SMALL)
    assert settings["seed"] == seed
    return np.asarray(image)


def test_every_layout_gives_the_same_image_as_the_vectors(generator, trained, tmp_path):
    vectors = load_file(str(trained))["emb_params"]
    generator.add_vectors("demotoy", [vectors])
    reference = pixels(generator)
    generator.remove_embedding("demotoy")
    generator.add_vectors("demotoy", [vectors * 3])
    assert not np.array_equal(pixels(generator), reference)  # the vectors do matter
    generator.remove_embedding("demotoy")

    files = [trained]
    files += convert_embedding(trained, "a1111", tmp_path / "a1111" / "demotoy")
    files += convert_embedding(trained, "diffusers", tmp_path / "diffusers" / "demotoy")
    assert [f.suffix for f in files] == [".safetensors", ".pt", ".safetensors"]
    for path in files:
        loaded = generator.add_embedding(path)
        assert loaded.trigger == "demotoy"
        assert np.array_equal(pixels(generator), reference), path
        generator.remove_embedding("demotoy")
    assert generator.embeddings == {}


def test_other_tools_files_load_and_generate(generator, tmp_path):
    width = generator.widths[0]
    # An old diffusers / sd-concepts file: {token: 1-D tensor} in a .bin pickle.
    torch.save({"<cat-toy>": torch.randn(width)}, tmp_path / "learned_embeds.bin")
    # AUTOMATIC1111's Train tab: string_to_param {"*": (N, D)} plus its fields.
    a1111 = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": torch.randn(2, width)},
        "name": "a1toy",
        "step": 500,
        "sd_checkpoint": "0123456789",
        "sd_checkpoint_name": "demo",
    }
    torch.save(a1111, tmp_path / "a1toy.pt")
    first = generator.add_embedding(tmp_path / "learned_embeds.bin", trigger="cattoy")
    second = generator.add_embedding(tmp_path / "a1toy.pt")
    try:
        assert (first.format, first.token_words) == ("diffusers-1d", ["cattoy"])
        assert (second.format, second.token_words) == ("a1111", ["a1toy", "a1toy1"])
        assert generator.expand("cattoy with a1toy") == "cattoy with a1toy a1toy1"
        plain = pixels(generator, "a toy")
        assert not np.array_equal(pixels(generator, "cattoy with a1toy"), plain)
        report = inspect_embedding(tmp_path / "a1toy.pt", generator.vocabularies(), "demo")
        assert report["trained_on"]["a1111_checkpoint_name"] == "demo"
        assert len(report["encoders"][0]["nearest_tokens"][1]) == 5
        assert "vector 1: norm" in format_report(report)
    finally:
        generator.remove_embedding("cattoy")
        generator.remove_embedding("a1toy")


def test_mistakes_are_clear_errors_and_the_generator_keeps_working(generator, trained, tmp_path):
    generator.add_embedding(trained)
    before = generator.encode_prompt("a photo of demotoy")["prompt_embeds"]
    lora = tmp_path / "style_lora.safetensors"
    save_file({"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(4, 4)}, str(lora))
    try:
        with pytest.raises(TiError, match="this is a LoRA"):
            generator.add_embedding(lora)
        with pytest.raises(TiError, match="'demotoy' is already used by embedding 'demotoy'"):
            generator.add_embedding(trained)
        with pytest.raises(TiError, match="not found"):
            generator.add_embedding(tmp_path / "missing.safetensors")
        with pytest.raises(TiError, match="the prompt is empty"):
            generator.generate(prompt="  ", **SMALL)
        with pytest.raises(TiError, match="no embedding with trigger 'other'"):
            generator.remove_embedding("other")
        assert list(generator.embeddings) == ["demotoy"]
        after = generator.encode_prompt("a photo of demotoy")["prompt_embeds"]
        assert torch.equal(before, after)
    finally:
        generator.remove_embedding("demotoy")


def test_long_prompts_are_chunked_or_cut_with_a_warning(generator, tmp_path):
    prompt = "a red toy on a table " * 20  # 120 tokens
    assert generator.encode_prompt(prompt, max_token_length=150)["prompt_embeds"].shape[1] == 152
    results = generator.generate(prompt=prompt, seed=1, **{**SMALL, "steps": 1})
    (warning,) = results[0][1]["warnings"]
    assert "120 tokens" in warning and "cut the last 45 tokens" in warning
    assert "max_token_length 150" in warning
    (path,) = save_images(results, tmp_path)
    text = Image.open(path).text
    assert text["prompt"] == prompt and text["seed"] == "1" and text["steps"] == "1"
    assert "warnings" not in text


def test_sdxl_embedding_generates_and_an_sd1_file_is_refused(trained, tmp_path):
    sdxl = Generator("demo:sdxl", device="cpu")
    with pytest.raises(TiError, match=r"vectors 32 wide .* needs vectors \d+ \(CLIP-L\) \+ \d+"):
        sdxl.add_embedding(trained)
    assert sdxl.embeddings == {}
    vectors = [torch.randn(2, width) for width in sdxl.widths]
    (path,) = save_embedding(tmp_path / "xltoy", vectors, token_string="xltoy", family="sdxl")
    sdxl.add_embedding(path)
    ((image, settings),) = sdxl.generate(prompt="a photo of xltoy", seed=5, **SMALL)
    assert image.size == (64, 64) and settings["embeddings"] == "xltoy"


def test_options_as_an_object_or_by_name_and_checked_as_declared(generator, tmp_path):
    options = GenerateOptions(prompt="a toy", sampler="Euler_A", seed=4, **SMALL)
    ((image, settings),) = generator.generate(options)
    assert settings["sampler"] == "euler_a"
    ((by_name, _),) = generator.generate(prompt="a toy", sampler="euler_a", seed=4, **SMALL)
    assert np.array_equal(np.asarray(image), np.asarray(by_name))
    with pytest.raises(TiError, match=r'sampler = "plms": expected one of "ddim", "pndm"'):
        generator.generate(options, sampler="plms")
    with pytest.raises(TiError, match=r"unknown generation option\(s\) stpes .*'steps'"):
        generator.generate(options, stpes=2)
    with pytest.raises(TiError, match=r"steps = 2.5: expected a whole number"):
        generator.generate(options, steps=2.5)


def test_the_generate_command_flags_are_the_options(tmp_path, capsys):
    flags = ["generate", "--ckpt", "demo:sd1", "--prompt", "a toy", "--outdir", str(tmp_path)]
    assert main([*flags, "--W", "32"]) == 2  # refused before the model loads
    assert "--W = 32: expected at least 64" in capsys.readouterr().err
    flags += ["--W", "64", "--H", "64", "--steps", "1", "--seed", "5", "--device", "cpu"]
    assert main([*flags, "--images_per_prompt", "3", "--batch_size", "2"]) == 0
    written = sorted(tmp_path.glob("*.png"))
    assert [path.name for path in written] == ["00000-5.png", "00001-6.png", "00002-7.png"]
    text = Image.open(written[0]).text
    assert (text["steps"], text["width"], text["sampler"]) == ("1", "64", "ddim")
