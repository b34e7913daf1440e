"""Sample prompt files in sd-scripts' forms, and sample images made from the caller's embeddings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ti_core.config.run_config import FIELDS
from ti_core.errors import ConfigError
from ti_core.generation.options import OPTIONS
from ti_core.generation.sampler_names import SAMPLERS
from ti_core.generation.samplers import (
    SamplePrompt,
    generate_samples,
    make_scheduler,
    parse_prompt_file,
)
from ti_core.models.loading import load_model

PROMPTS_TXT = """\
# samples for mychar4
a photo of mychar4 --n blurry, lowres --w 640 --h 512 --d 42 --l 6.5 --s 28 --ss euler_a

  mychar4 on a beach --D 7 --SS DPMSolver++
"""


def test_text_prompt_file_with_comments_and_options(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text(PROMPTS_TXT)
    first, second = parse_prompt_file(path)
    assert first == SamplePrompt(
        prompt="a photo of mychar4",
        negative_prompt="blurry, lowres",
        width=640,
        height=512,
        seed=42,
        steps=28,
        scale=6.5,
        sampler="euler_a",
        where=f"{path}:2",
    )
    assert (second.prompt, second.seed, second.sampler) == ("mychar4 on a beach", 7, "dpmsolver++")
    assert (second.width, second.steps, second.scale, second.negative_prompt) == (None,) * 3 + ("",)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("a cat --w wide", r"prompts.txt:3: --w wide: expected a whole number"),
        ("a cat --l high", r"prompts.txt:3: --l high: expected a number"),
        ("a cat --x 5", r"prompts.txt:3: unknown option --x 5"),
        ("a cat --s 1000", r"prompts.txt:3: sample_steps = 1000: expected 1-500"),
        ("a cat --ss plms", r"prompts.txt:3: sampler 'plms': expected one of ddim"),
        ("a cat --w 32", r"prompts.txt:3: width = 32: expected at least 64"),
        ("a cat --n", r"prompts.txt:3: option --n needs a value"),
    ],
)
def test_a_bad_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "prompts.txt"
    path.write_text(f"# header\na dog\n{line}\n")
    with pytest.raises(ConfigError, match=message):
        parse_prompt_file(path)


def test_toml_and_json_prompt_files(tmp_path):
    toml_path = tmp_path / "prompts.toml"
    toml_path.write_text(
        '[prompt]\nnegative_prompt = "lowres"\nwidth = 512\nsample_steps = 20\n\n'
        '[[prompt.subset]]\nprompt = "mychar4 smiling"\nseed = 1\n\n'
        '[[prompt.subset]]\nprompt = "mychar4 running"\nsample_steps = 12\nscale = 5\n'
    )
    smiling, running = parse_prompt_file(toml_path)
    assert (smiling.negative_prompt, smiling.width, smiling.steps, smiling.seed) == (
        "lowres",
        512,
        20,
        1,
    )
    assert (running.steps, running.scale) == (12, 5.0)

    json_path = tmp_path / "prompts.json"
    json_path.write_text(
        json.dumps(["mychar4 --d 3", {"prompt": "mychar4 at night", "sample_sampler": "ddim"}])
    )
    line, table = parse_prompt_file(json_path)
    assert (line.prompt, line.seed, table.sampler) == ("mychar4", 3, "ddim")

    json_path.write_text(json.dumps([{"prompt": "x", "width": "512"}]))
    with pytest.raises(ConfigError, match=r"entry 1: width = '512': expected int"):
        parse_prompt_file(json_path)
    (tmp_path / "prompts.yaml").write_text("a\n")
    with pytest.raises(ConfigError, match=r"\.txt, \.toml or \.json"):
        parse_prompt_file(tmp_path / "prompts.yaml")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: threads only add overhead, and on a busy 2-core machine make a 0.3 s image
    take 10 s (OpenMP workers wait on each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sd1(demo_cache):
    return load_model("demo:sd1").pipeline


def _own_encoder(pipeline):
    """The test's stand-in for the trainer's encoder: the pipeline's own text encoding."""

    def encode(text: str) -> dict:
        embeds = pipeline.encode_prompt(
            text, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        if len(embeds) == 4:  # SDXL: (prompt, negative, pooled, negative pooled)
            return {"prompt_embeds": embeds[0], "pooled_prompt_embeds": embeds[2]}
        return {"prompt_embeds": embeds[0]}

    return encode


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_samples_are_named_seeded_and_described(sd1, tmp_path):
    prompts = [
        SamplePrompt("a photo of demotoy", seed=7, steps=2, negative_prompt="blurry"),
        SamplePrompt("demotoy on a table", steps=2, sampler="euler_a"),
    ]
    sd1.unet.train()
    scheduler, rng = sd1.scheduler, torch.get_rng_state()
    made = generate_samples(
        sd1,
        prompts,
        step=12,
        samples_dir=tmp_path,
        encode_prompt=_own_encoder(sd1),
        device="cpu",
        default_seed=100,
        width=64,
        height=64,
    )
    assert [path.name for path, _ in made] == ["000012-00-7.png", "000012-01-101.png"]
    assert [prompt for _, prompt in made] == prompts
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000012-00-7.png", "000012-01-101.png"]
    text = Image.open(made[0][0]).text
    assert text["prompt"] == "a photo of demotoy" and text["negative_prompt"] == "blurry"
    assert (text["seed"], text["steps"], text["scale"], text["sampler"]) == (
        "7",
        "2",
        "7.5",
        "ddim",
    )
    assert (text["size"], text["step"]) == ("64x64", "12")
    assert Image.open(made[1][0]).text["sampler"] == "euler_a"
    # The run's state is as it was: training mode, scheduler, global RNG.
    assert sd1.unet.training and not sd1.vae.training
    assert sd1.scheduler is scheduler and torch.equal(torch.get_rng_state(), rng)
    sd1.unet.eval()


def test_the_image_comes_from_the_callers_embeddings_and_the_seed(sd1, tmp_path):
    encode = _own_encoder(sd1)

    def make(prompts, folder, encoder=encode):
        made = generate_samples(
            sd1,
            prompts,
            step=0,
            samples_dir=tmp_path / folder,
            encode_prompt=encoder,
            device="cpu",
            width=64,
            height=64,
        )
        return [_pixels(path) for path, _ in made]

    same_seed = [
        SamplePrompt("demotoy", seed=3, steps=2),
        SamplePrompt("a red car", seed=3, steps=2),
    ]
    toy, car = make(same_seed, "a")
    assert not np.array_equal(toy, car)  # different text, different image
    (again,) = make(same_seed[:1], "b")
    assert np.array_equal(toy, again)  # same seed and text, same image
    other_seed = make([SamplePrompt("demotoy", seed=4, steps=2)], "c")[0]
    assert not np.array_equal(toy, other_seed)
    # The pipeline uses only the embeddings it is given, never its own tokenization.
    toy_always = make(same_seed, "d", encoder=lambda text: encode("demotoy"))
    assert np.array_equal(toy_always[0], toy_always[1])


@pytest.mark.filterwarnings("ignore:.*algorithm_type dpmsolver is deprecated:FutureWarning")
def test_make_scheduler_keeps_the_models_prediction_type(sd1):
    v_base = type(sd1.scheduler).from_config(sd1.scheduler.config, prediction_type="v_prediction")
    scheduler = make_scheduler("k_euler_a", v_base)
    assert type(scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert scheduler.config.prediction_type == "v_prediction"
    assert make_scheduler("dpmsolver", v_base).config.algorithm_type == "dpmsolver"
    with pytest.raises(ConfigError, match="expected one of"):
        make_scheduler("plms", v_base)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")  # diffusers'
def test_every_sampler_offered_makes_its_scheduler(sd1):
    assert FIELDS["sample_sampler"].choices == OPTIONS["sampler"].choices == tuple(SAMPLERS)
    for name in SAMPLERS:
        try:
            scheduler = make_scheduler(name, sd1.scheduler)
        except ConfigError as error:  # LMS without scipy: a message, not a crash
            assert "needs scipy" in str(error)
            continue
        assert type(scheduler).__name__ == SAMPLERS[name][0]


def test_an_sdxl_sample(demo_cache, tmp_path):
    pipeline = load_model("demo:sdxl").pipeline
    ((path, _),) = generate_samples(
        pipeline,
        [SamplePrompt("demotoy", steps=2)],
        step=5,
        samples_dir=tmp_path,
        encode_prompt=_own_encoder(pipeline),
        device="cpu",
        width=64,
        height=64,
    )
    assert path.name == "000005-00-0.png"
    image = Image.open(path)
    assert image.size == (64, 64) and image.text["size"] == "64x64"
