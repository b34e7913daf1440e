"""What both measured loops start from: the model (the tiny demo model, or random weights at the
real SD1.5 / SDXL layer sizes, built once and kept), a small dataset, and the run's settings.

Runs in its own process (`bench_train.py --only prepare`), so building a model never counts
towards a measured loop's peak memory.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ti_core.config.run_config import Config
from ti_core.models.assets import ASSETS
from ti_core.models.demo import cache_root

log = logging.getLogger("bench")

TOKEN_STRING, INIT_WORD = "demotoy", "toy"  # the demo dataset's captions use them
LEARNING_RATE = 5e-3
REAL_CONFIGS = {"sd1": "sd15", "sdxl": "sdxl-base"}  # shipped in ti_core/assets/models
REAL_RESOLUTION = {"sd1": 512, "sdxl": 1024}
TINY_RESOLUTION = 64
MARKER = "bench-model.json"


def bench_dir() -> Path:
    return cache_root() / "bench"


def prepare(family: str, size: str, num_images: int, seed: int) -> dict[str, str]:
    """The model folder and dataset folder both loops read; built on first use, then reused."""
    from ti_core.models.demo import demo_dir
    from ti_core.models.demo_dataset import demo_dataset

    model = demo_dir(family) / "model" if size == "tiny" else real_model(family, seed)
    data = bench_dir() / f"data-{num_images}-seed{seed}"
    if not (data / "done").is_file():
        shutil.rmtree(data, ignore_errors=True)
        # One repeat each: an epoch is every image once; the loops run as many epochs as needed.
        demo_dataset(data, num_images=num_images, repeats=1, seed=seed)
        (data / "done").write_text("")
    return {"model": str(model), "data": str(data)}


def real_model(family: str, seed: int) -> Path:
    """A diffusers folder with the real model's layer sizes and random weights (no download).
    SD1.5 in float32 is about 4.3 GB on disk, SDXL about 14 GB."""
    folder = bench_dir() / f"{REAL_CONFIGS[family]}-random-seed{seed}"
    if (folder / MARKER).is_file():
        return folder
    log.warning("building %s at its real size with random weights in %s (once)", family, folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{folder.name}.tmp-", dir=folder.parent))
    try:
        build_real_pipeline(family, seed).save_pretrained(staging, safe_serialization=True)
        (staging / MARKER).write_text(json.dumps({"family": family, "seed": seed}) + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def build_real_pipeline(family: str, seed: int) -> Any:
    """The pipeline from the shipped configs, every part randomly initialised from `seed`."""
    import diffusers
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from ti_core.models.tokenizer import load_tokenizer

    configs = ASSETS / "models" / REAL_CONFIGS[family]
    torch.manual_seed(seed)
    parts: dict[str, Any] = {
        "unet": UNet2DConditionModel.from_config(
            UNet2DConditionModel.load_config(configs / "unet")
        ),
        "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(configs / "vae")),
        "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(configs / "text_encoder")),
    }
    scheduler_config = json.loads((configs / "scheduler" / "scheduler_config.json").read_text())
    parts["scheduler"] = getattr(diffusers, scheduler_config["_class_name"]).from_config(
        scheduler_config
    )
    if family == "sdxl":
        parts["text_encoder_2"] = CLIPTextModelWithProjection(
            CLIPTextConfig.from_pretrained(configs / "text_encoder_2")
        )
        parts["tokenizer"], parts["tokenizer_2"] = load_tokenizer(), load_tokenizer("!")
        return diffusers.StableDiffusionXLPipeline(**parts, add_watermarker=False)
    parts["tokenizer"] = load_tokenizer()
    return diffusers.StableDiffusionPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )


def bench_config(
    data: str, resolution: int, batch: int, seed: int, precision: str, cache_latents: bool
) -> Config:
    """The run settings both loops share (the trainer's defaults otherwise)."""
    config = Config()
    config.dataset.train_data_dir, config.dataset.caption_extension = data, ".txt"
    config.dataset.resolution = str(resolution)
    config.dataset.train_batch_size = batch
    config.dataset.cache_latents = cache_latents
    config.token.token_string, config.token.init_word = TOKEN_STRING, INIT_WORD
    config.training.validate_every_n_epochs = 0  # measured apart: the loops compare steps
    config.training.seed, config.training.mixed_precision = seed, precision
    config.optimizer.learning_rate = LEARNING_RATE
    return config
