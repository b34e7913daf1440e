"""The options of making an image, declared once. The `generate` and `compare` CLI flags, the
worker's request keys, Generator.generate and the Generate tab's widgets are all made from
GenerateOptions' fields and bound by name. Torch-free: the GUI reads it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ti_core.config.options import FieldInfo, field_infos, opt
from ti_core.config.toml_io import check_value
from ti_core.embeddings.token_preview import TOKEN_BUDGETS
from ti_core.errors import ConfigError, closest
from ti_core.generation.sampler_names import SAMPLER_NAMES

DEFAULT_STEPS = 30  # sd-scripts' sample_image_inference default
# DDIM's timesteps run off the end of a 1000-step schedule at 1000 steps (IndexError); no
# sampler here gains anything past a few hundred.
MAX_STEPS = 500
DEFAULT_SCALE = 7.5
MIN_SIZE = 64
MAX_SEED = 2**32 - 1
RANDOM_SEED = -1


@dataclass(frozen=True)
class GenerateOptions:
    """What one Generate click (or `generate` command) makes."""

    prompt: str = opt("", "What to draw; a loaded embedding's trigger word stands for it.")
    negative_prompt: str = opt("", "What to keep out of the image.")
    seed: int = opt(
        RANDOM_SEED,
        "The first image's seed; the next images count up from it. -1: a random one.",
        max=MAX_SEED,
    )
    steps: int = opt(DEFAULT_STEPS, "Sampling steps.", min=1, max=MAX_STEPS)
    scale: float = opt(DEFAULT_SCALE, "CFG scale: how closely to follow the prompt.", min=0)
    sampler: str = opt("ddim", "The sampler (sd-scripts' names).", choices=SAMPLER_NAMES)
    width: int = opt(512, "Image width in pixels (down to a multiple of 8).", min=MIN_SIZE)
    height: int = opt(512, "Image height in pixels (down to a multiple of 8).", min=MIN_SIZE)
    clip_skip: int = opt(
        1, "Use the N-th text encoder layer from the end (1: the last).", min=1, max=12
    )
    max_token_length: int = opt(
        75, "Prompt token budget; longer prompts are cut.", choices=TOKEN_BUDGETS
    )
    batch_count: int = opt(1, "Batches to make, one after another.", min=1)
    batch_size: int = opt(1, "Images made at once in each batch.", min=1)


OPTIONS: dict[str, FieldInfo] = field_infos(GenerateOptions)
# A grid's own fields: one prompt for the whole grid, a seed per column, one image per cell.
SET_BY_GRID = ("prompt", "seed", "batch_count", "batch_size")
GRID_OPTIONS = tuple(name for name in OPTIONS if name not in SET_BY_GRID)


def options_from(
    values: Mapping[str, Any],
    base: GenerateOptions | None = None,
    labels: Mapping[str, str] | None = None,
) -> GenerateOptions:
    """`base` (the defaults when None) with `values` set by field name, every field checked
    against its declaration. ConfigError names the key, or its entry in `labels` (a CLI flag)."""
    unknown = [name for name in values if name not in OPTIONS]
    if unknown:
        near = closest(unknown[0], OPTIONS)
        raise ConfigError(
            f"unknown generation option(s) {', '.join(unknown)}"
            + (f" (did you mean {near!r}?)" if near else "")
            + f"; known are {', '.join(OPTIONS)}."
        )
    options = dataclasses.replace(base or GenerateOptions(), **values)
    labels = labels or {}
    checked = {
        name: checked_value(info, getattr(options, name), labels.get(name, name))
        for name, info in OPTIONS.items()
    }
    return GenerateOptions(**checked)


def checked_value(info: FieldInfo, value: Any, label: str) -> Any:
    """One option's value, checked as a run config value is (type, choices, limits), except
    that a choice may be typed in any case (given back as declared)."""
    if info.choices is not None and isinstance(value, str):
        by_text = {str(choice).lower(): choice for choice in info.choices}
        value = by_text.get(value.lower(), value)
    return check_value(info, value, label)
