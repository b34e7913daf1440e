"""Checks before any model work: every mistake a user can make in the config, the token or the
data is reported in seconds, not after minutes of loading, and nothing is written meanwhile.
"""

from __future__ import annotations

import os
from pathlib import Path

from ti_core.config.run_config import Config
from ti_core.data.doctor import DatasetReport
from ti_core.data.masks import check_mask_options, check_mask_settings
from ti_core.data.run_data import check_data, require_clean
from ti_core.data.spec import DatasetSpec
from ti_core.embeddings.specs import EmbeddingSpec, embedding_specs
from ti_core.embeddings.token_preview import preview
from ti_core.errors import ConfigError, TiError, TokenError


def check_output_dir(path: str) -> Path:
    """The run folder must be writable (or creatable) before anything is loaded; nothing is
    created here, so a run that stops at a check leaves no folder behind."""
    folder = Path(path)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        reason = "it is a file" if existing.exists() and not existing.is_dir() else "no permission"
        raise ConfigError(
            f"output_dir = {path}: cannot write there ({reason}: {existing}). "
            "Pick a folder you can write to."
        )
    return folder


def check_token_settings(config: Config) -> None:
    """Each embedding's token string, init word and weights file, checked with the vendored
    tokenizer (every SD family uses the same CLIP vocabulary)."""
    embeddings = embedding_specs(config)
    strings = [embedding.token_string for embedding in embeddings]
    if len(set(strings)) != len(strings):
        raise ConfigError(f"token strings {strings}: each embedding needs its own token string.")
    for embedding in embeddings:
        check_embedding_settings(embedding)


def check_embedding_settings(embedding: EmbeddingSpec) -> None:
    token_string, init_word, weights = (
        embedding.token_string,
        embedding.init_word,
        embedding.weights,
    )
    count = embedding.num_vectors or 1
    if not token_string:
        raise ConfigError(
            "[token] token_string is empty: set the made-up word your captions use for the "
            "concept (e.g. mychar4)."
        )
    problem = preview("", token_string, count).problem
    if problem:
        raise TokenError(problem)
    if init_word:
        used = preview(init_word).tokens_used
        if used == 0:
            raise TokenError(
                f"init_word {init_word!r} gives no tokens at all; use a plain word close "
                "to the concept (e.g. cute, dog, painting)."
            )
        if not weights and used > count:
            raise TokenError(
                f"init_word {init_word!r} is {used} tokens, more than the "
                f"{count} vectors (num_vectors_per_token); use a shorter "
                f"init word or set num_vectors_per_token = {used}."
            )
    if weights:
        from ti_core.embeddings.files import read_embedding

        found = read_embedding(weights)
        if embedding.num_vectors is not None and embedding.num_vectors != found.num_vectors:
            raise TokenError(
                f"weights = {weights} has {found.num_vectors} vectors, but "
                f"num_vectors_per_token = {embedding.num_vectors}; remove num_vectors_per_token "
                "(the file sets it)."
            )


def family_hint(model_name: str) -> str | None:
    """The model family when it shows without loading weights (folders, .safetensors, demos)."""
    from ti_core.models.loading import inspect_model

    if not model_name or model_name.lower().endswith((".ckpt", ".pt", ".bin")):
        return None
    try:
        return inspect_model(model_name).family
    except TiError:
        return None  # the model loader reports it, after the data checks


def check_runtime_options(config: Config) -> None:
    """The speed, DeepSpeed, dataset_class and Hub options (config/runtime_options.py): a
    missing package, backend or class, or a Hub that cannot be reached, stops the run here."""
    from ti_core.training.distributed import check_deepspeed
    from ti_core.training.hub import check_hub
    from ti_core.training.runtime import check_speed_options

    check_speed_options(config.training)
    check_deepspeed(config.training)
    if config.dataset.dataset_class:
        from ti_core.data.custom_dataset import load_dataset_class

        load_dataset_class(config.dataset.dataset_class)
    check_hub(config.saving)


def preflight(config: Config) -> tuple[list[DatasetSpec], DatasetReport]:
    """Everything that can be checked without the model, in the order a user fixes things."""
    from ti_core.training.optim import check_optimizer_settings

    check_output_dir(config.saving.output_dir)
    family = family_hint(config.model.pretrained_model_name_or_path) or "sdxl"
    check_token_settings(config)
    training = config.training
    check_optimizer_settings(
        config.optimizer, None if training.max_train_epochs else training.max_train_steps
    )
    if config.sampling.sample_prompts:
        from ti_core.generation.samplers import parse_prompt_file

        parse_prompt_file(config.sampling.sample_prompts)  # a bad line stops now, not mid-run
    if config.sampling.clip_model:
        from ti_core.training.scores import check_clip_model

        check_clip_model(config.sampling.clip_model)  # not mid-run, at the first score
    check_runtime_options(config)
    check_mask_options(config)
    specs, report = check_data(config, family)
    check_mask_settings(config, specs)
    require_clean(report)
    return specs, report
