"""Quality scores (clip_model): CLIP-I and CLIP-T are the cosines a hand computation gives, a
demo run writes one finite score per saved step, and a folder that is not CLIP is refused
before training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import CLIPConfig, CLIPModel

from ti_core.cli.main import main
from ti_core.run_folder.reader import read_events, read_run_folder
from ti_core.training.scores import Clip, class_prompt, clip_i, clip_t

DEMO = [
    "--pretrained_model_name_or_path=demo:sd1", "--train_data_dir=demo:sd1",
    "--caption_extension=.txt", "--resolution=64", "--token_string=demotoy", "--init_word=toy",
    "--train_batch_size=4",
]  # fmt: skip


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIP saved as transformers saves one (no tokenizer, no preprocessor)."""
    torch.manual_seed(0)
    layers = {"num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 37}
    config = CLIPConfig(
        text_config={"vocab_size": 49408, "hidden_size": 32, **layers},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, **layers},
        projection_dim=16,
    )
    folder = tmp_path_factory.mktemp("tiny-clip")
    CLIPModel(config).save_pretrained(folder)
    return folder


def _images() -> list[Image.Image]:
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randint(0, 256, (3, 48, 40, 3), generator=generator, dtype=torch.uint8)
    return [Image.fromarray(array.numpy()) for array in pixels]


def test_clip_i_is_one_for_the_same_image_and_the_mean_pairwise_cosine_otherwise(clip_dir):
    clip = Clip(str(clip_dir), torch.device("cpu"))
    images = _images()
    same = clip.image_features([images[0], images[0]])
    assert clip_i(same, clip.image_features([images[0]])) == pytest.approx(1.0, abs=1e-6)

    generated, reference = clip.image_features(images[:2]), clip.image_features(images[1:])
    by_hand = [
        F.cosine_similarity(g, r, dim=0).item() for g in generated for r in reference
    ]  # 2 x 2 pairs, one of them the same image
    assert clip_i(generated, reference) == pytest.approx(sum(by_hand) / 4, abs=1e-6)
    assert clip_i(generated, reference) < 1.0


def test_clip_t_is_the_mean_cosine_of_each_image_with_its_own_prompt(clip_dir):
    clip = Clip(str(clip_dir), torch.device("cpu"))
    prompts = [class_prompt(p, "toy") for p in ("a photo of {} on the beach", "a {} painting")]
    assert prompts == ["a photo of toy on the beach", "a toy painting"]
    assert class_prompt("a photo of {} on the beach", "") == "a photo of on the beach"
    images, texts = clip.image_features(_images()[:2]), clip.text_features(prompts)
    assert images.shape == texts.shape == (2, 16)
    dots = (images * texts).sum(-1) / (images.norm(dim=-1) * texts.norm(dim=-1))
    assert clip_t(images, texts) == pytest.approx(dots.mean().item(), abs=1e-6)
    swapped = clip_t(images, texts.flip(0))  # the other prompt's text: a different figure
    assert swapped != pytest.approx(clip_t(images, texts), abs=1e-6)


def test_a_demo_run_scores_each_saved_step(tmp_path, clip_dir):
    run_dir = tmp_path / "run"
    flags = ["--max_train_steps=6", "--save_every_n_steps=3", f"--clip_model={clip_dir}"]
    assert main(["train", *DEMO, f"--output_dir={run_dir}", *flags]) == 0
    scores = [e for e in read_events(run_dir / "events.jsonl") if e["type"] == "score"]
    assert [score["step"] for score in scores] == [3, 6]  # step 6: saved twice, scored once
    for score in scores:
        assert score["images"] == 4
        assert all(
            math.isfinite(score[key]) and -1 <= score[key] <= 1 for key in ("clip_i", "clip_t")
        )
    assert read_run_folder(run_dir).latest.scores == scores
    assert not list((run_dir / "samples").iterdir())  # scoring images are not samples


@pytest.mark.parametrize("kind", ["empty", "text encoder only"])
def test_a_folder_that_is_not_clip_is_refused_before_training(tmp_path, capsys, kind):
    folder = tmp_path / "not-clip"
    folder.mkdir()
    if kind != "empty":
        (folder / "config.json").write_text(json.dumps({"model_type": "clip_text_model"}))
    run_dir = tmp_path / "run"
    code = main(["train", *DEMO, f"--output_dir={run_dir}", f"--clip_model={folder}"])
    err = capsys.readouterr().err
    assert code != 0 and "clip_model" in err and str(folder) in err
    assert not run_dir.exists()  # refused before anything was loaded or written
