"""Checks before any model work: every mistake a user can make in the config, the token or the
data is reported in seconds, not after minutes of loading, and nothing is written meanwhile.
"""

from __future__ import annotations

import os
from pathlib import Path

from ti_core.config import Config
from ti_core.data.doctor import DatasetReport
from ti_core.data.spec import DatasetSpec
from ti_core.errors import ConfigError, TiError, TokenError
from ti_core.token_preview import preview
from ti_core.training_data import check_data, require_clean


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


def explicit_num_vectors(config: Config) -> int | None:
    """num_vectors_per_token as the user set it; None when left at 1, so that a --weights file
    can set the count (a different explicit count is an error)."""
    count = config.token.num_vectors_per_token
    return None if count == 1 else count


def check_token_settings(config: Config) -> None:
    """The token string, init word and weights file, checked with the vendored tokenizer (every
    SD family uses the same CLIP vocabulary)."""
    token = config.token
    if not token.token_string:
        raise ConfigError(
            "[token] token_string is empty: set the made-up word your captions use for the "
            "concept (e.g. mychar4)."
        )
    problem = preview("", token.token_string, token.num_vectors_per_token).problem
    if problem:
        raise TokenError(problem)
    if token.init_word:
        used = preview(token.init_word).tokens_used
        if used == 0:
            raise TokenError(
                f"init_word {token.init_word!r} gives no tokens at all; use a plain word close "
                "to the concept (e.g. cute, dog, painting)."
            )
        if not token.weights and used > token.num_vectors_per_token:
            raise TokenError(
                f"init_word {token.init_word!r} is {used} tokens, more than the "
                f"{token.num_vectors_per_token} vectors (num_vectors_per_token); use a shorter "
                f"init word or set num_vectors_per_token = {used}."
            )
    if token.weights:
        from ti_core.embedding_files import read_embedding

        embedding = read_embedding(token.weights)
        wanted = explicit_num_vectors(config)
        if wanted is not None and wanted != embedding.num_vectors:
            raise TokenError(
                f"weights = {token.weights} has {embedding.num_vectors} vectors, but "
                f"num_vectors_per_token = {wanted}; remove num_vectors_per_token "
                "(the file sets it)."
            )


def family_hint(model_name: str) -> str | None:
    """The model family when it shows without loading weights (folders, .safetensors, demos)."""
    from ti_core.models import inspect_model

    if not model_name or model_name.lower().endswith((".ckpt", ".pt", ".bin")):
        return None
    try:
        return inspect_model(model_name).family
    except TiError:
        return None  # the model loader reports it, after the data checks


def preflight(config: Config) -> tuple[list[DatasetSpec], DatasetReport]:
    """Everything that can be checked without the model, in the order a user fixes things."""
    check_output_dir(config.saving.output_dir)
    family = family_hint(config.model.pretrained_model_name_or_path) or "sdxl"
    check_token_settings(config)
    if config.sampling.sample_prompts:
        from ti_core.sampling import parse_prompt_file

        parse_prompt_file(config.sampling.sample_prompts)  # a bad line stops now, not mid-run
    specs, report = check_data(config, family)
    require_clean(report)
    return specs, report
