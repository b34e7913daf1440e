"""Sample images mid-run with the embedding as it is at that step: prompts go through the
trainer's own text encoding (trainable rows spliced in), never the pipeline's tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ti_core.config.run_config import Config
from ti_core.config.toml_io import parse_resolution
from ti_core.embeddings.text_encoding import encode
from ti_core.embeddings.tokens import tokenize_captions
from ti_core.generation.samplers import generate_samples, parse_prompt_file
from ti_core.training.setup import TrainableModel


def prompt_encoder(config: Config, model: TrainableModel) -> Any:
    """encode_prompt(text) -> the pipeline's *_embeds arguments, token string expanded."""

    def encode_prompt(text: str) -> dict[str, Any]:
        caption = model.expand(text)
        input_ids = [
            tokenize_captions(tokenizer, [caption], config.model.max_token_length).input_ids
            for tokenizer in model.tokenizers
        ]
        with torch.no_grad():
            condition = encode(
                model.loaded.family, model.text_encoders, input_ids, config.model.clip_skip
            )
        embeds = {"prompt_embeds": condition.context}
        if condition.pooled is not None:
            embeds["pooled_prompt_embeds"] = condition.pooled
        return embeds

    return encode_prompt


def make_training_samples(
    config: Config, model: TrainableModel, step: int
) -> list[tuple[Path, str]]:
    """One image per prompt of sample_prompts, into the run's samples/ folder."""
    pipeline = model.loaded.pipeline
    width, height = parse_resolution(config.dataset.resolution)
    made = generate_samples(
        pipeline,
        parse_prompt_file(config.sampling.sample_prompts),
        step=step,
        samples_dir=Path(config.saving.output_dir) / "samples",
        encode_prompt=prompt_encoder(config, model),
        device=pipeline.unet.device,
        default_seed=config.training.seed,
        width=width,
        height=height,
        sampler=config.sampling.sample_sampler,
    )
    return [(path, prompt.prompt) for path, prompt in made]
