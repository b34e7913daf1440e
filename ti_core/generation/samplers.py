"""Sample images during training from an sd-scripts prompt file (.txt, .toml or .json).

The prompt file format, the option letters and the defaults (30 steps, CFG 7.5) are
sd-scripts' (library/train_util.py: line_to_prompt_dict, sample_image_inference). The
pipeline never tokenizes a prompt itself: the caller's `encode_prompt` does, with the
trainable vectors spliced in, so the samples show the embedding as it is being trained.
"""

from __future__ import annotations

import json
import logging
import tomllib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ti_core.atomic import atomic_path
from ti_core.errors import ConfigError
from ti_core.generation.options import DEFAULT_SCALE, DEFAULT_STEPS, MAX_STEPS, MIN_SIZE
from ti_core.generation.sampler_names import SAMPLERS

log = logging.getLogger(__name__)

# Text-file option letters -> the keys sd-scripts uses in its .toml/.json prompt files.
TEXT_OPTIONS = {
    "n": "negative_prompt",
    "w": "width",
    "h": "height",
    "d": "seed",
    "s": "sample_steps",
    "l": "scale",
    "ss": "sample_sampler",
}
KEY_TYPES: dict[str, type] = {"prompt": str, "negative_prompt": str, "sample_sampler": str}
KEY_TYPES |= {"width": int, "height": int, "seed": int, "sample_steps": int, "scale": float}


@dataclass(frozen=True)
class SamplePrompt:
    """One line of a prompt file; None means "the run's default"."""

    prompt: str
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    steps: int | None = None
    scale: float | None = None
    sampler: str | None = None
    where: str = ""  # file and line (or entry), for messages


def parse_prompt_file(path: str | Path) -> list[SamplePrompt]:
    """Read an sd-scripts prompt file: .txt (one prompt per line, `#` comments, options
    --n --w --h --d --l --s --ss), .toml ([prompt] defaults + [[prompt.subset]]) or .json
    (a list of prompt strings or tables). Any mistake is a ConfigError naming file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the sample prompts file ({error}).") from None
    suffix = path.suffix.lower()
    if suffix == ".txt":
        prompts = [
            _from_text_line(line.strip(), f"{path}:{number}")
            for number, line in enumerate(text.splitlines(), start=1)
            if line.strip() and not line.strip().startswith("#")
        ]
    elif suffix == ".toml":
        prompts = _from_toml(text, path)
    elif suffix == ".json":
        prompts = _from_json(text, path)
    else:
        raise ConfigError(f"{path}: sample prompts must be a .txt, .toml or .json file.")
    if not prompts:
        raise ConfigError(f"{path}: holds no prompts. Add one prompt per line.")
    return prompts


def _from_text_line(line: str, where: str) -> SamplePrompt:
    prompt, *options = line.split(" --")
    values: dict[str, Any] = {"prompt": prompt.strip()}
    for option in options:
        if not option.strip():  # a stray " --" at the end, as sd-scripts allows
            continue
        letter, _, value = option.strip().partition(" ")
        key = TEXT_OPTIONS.get(letter.lower())
        if key is None:
            known = ", ".join(f"--{name}" for name in TEXT_OPTIONS)
            raise ConfigError(f"{where}: unknown option --{option.strip()}; known are {known}.")
        if not value.strip():
            raise ConfigError(f"{where}: option --{letter} needs a value, e.g. --{letter} 7.")
        values[key] = _from_text(key, value.strip(), f"{where}: --{letter} {value.strip()}")
    return _prompt_from_dict(values, where)


def _from_text(key: str, text: str, where: str) -> Any:
    kind = KEY_TYPES[key]
    try:
        return kind(text)
    except ValueError:
        expected = "a whole number" if kind is int else "a number"
        raise ConfigError(f"{where}: expected {expected}.") from None


def _from_toml(text: str, path: Path) -> list[SamplePrompt]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    table = data.get("prompt")
    subsets = table.get("subset") if isinstance(table, dict) else None
    if not isinstance(subsets, list) or not all(isinstance(s, dict) for s in subsets):
        raise ConfigError(
            f"{path}: expected a [prompt] table with defaults and one [[prompt.subset]] "
            "table per prompt, as in sd-scripts."
        )
    defaults = {key: value for key, value in table.items() if key != "subset"}
    # sd-scripts merges with dict(**defaults, **subset), which refuses a repeated key;
    # here a subset's value wins over the default.
    return [
        _prompt_from_dict({**defaults, **subset}, f"{path}: [[prompt.subset]] {number}")
        for number, subset in enumerate(subsets, start=1)
    ]


def _from_json(text: str, path: Path) -> list[SamplePrompt]:
    try:
        data = json.loads(text)
    except ValueError as error:
        raise ConfigError(f"{path}: not valid JSON: {error}") from None
    if not isinstance(data, list):
        raise ConfigError(f"{path}: expected a JSON list of prompts (strings or objects).")
    prompts = []
    for number, entry in enumerate(data, start=1):
        where = f"{path}: entry {number}"
        if isinstance(entry, str):
            prompts.append(_from_text_line(entry.strip(), where))
        elif isinstance(entry, dict):
            prompts.append(_prompt_from_dict(entry, where))
        else:
            raise ConfigError(f"{where}: expected a prompt string or an object.")
    return prompts


def _prompt_from_dict(values: dict[str, Any], where: str) -> SamplePrompt:
    """Check sd-scripts' prompt keys and build a SamplePrompt."""
    for key, value in values.items():
        kind = KEY_TYPES.get(key)
        if kind is None:
            raise ConfigError(f"{where}: unknown key {key!r}; known are {', '.join(KEY_TYPES)}.")
        number_ok = kind is float and isinstance(value, int)
        if (not isinstance(value, kind) and not number_ok) or isinstance(value, bool):
            raise ConfigError(f"{where}: {key} = {value!r}: expected {kind.__name__}.")
    if not str(values.get("prompt", "")).strip():
        raise ConfigError(f"{where}: the prompt is empty.")
    for key in ("width", "height"):
        if key in values and values[key] < MIN_SIZE:
            raise ConfigError(f"{where}: {key} = {values[key]}: expected at least {MIN_SIZE}.")
    if not 1 <= values.get("sample_steps", 1) <= MAX_STEPS:
        raise ConfigError(
            f"{where}: sample_steps = {values['sample_steps']}: expected 1-{MAX_STEPS}."
        )
    if values.get("seed", 0) < 0 or values.get("scale", 0) < 0:
        raise ConfigError(f"{where}: seed and scale cannot be negative.")
    sampler = values.get("sample_sampler")
    if sampler is not None and sampler.lower() not in SAMPLERS:
        raise ConfigError(f"{where}: sampler {sampler!r}: expected one of {', '.join(SAMPLERS)}.")
    return SamplePrompt(
        prompt=values["prompt"].strip(),
        negative_prompt=values.get("negative_prompt", "").strip(),
        width=values.get("width"),
        height=values.get("height"),
        seed=values.get("seed"),
        steps=values.get("sample_steps"),
        scale=float(values["scale"]) if "scale" in values else None,
        sampler=sampler.lower() if sampler else None,
        where=where,
    )


def make_scheduler(name: str, base_scheduler: Any) -> Any:
    """A fresh scheduler of sd-scripts' sampler `name`, from the pipeline's scheduler config
    (so the model's beta schedule and prediction_type carry over)."""
    import diffusers

    if name.lower() not in SAMPLERS:
        raise ConfigError(f"sampler {name!r}: expected one of {', '.join(SAMPLERS)}.")
    class_name, extra = SAMPLERS[name.lower()]
    try:
        return getattr(diffusers, class_name).from_config(base_scheduler.config, **extra)
    except ImportError:  # diffusers' LMS needs scipy
        raise ConfigError(
            f"sampler {name!r} needs scipy, which is not installed. Install it "
            "(pip install scipy) or pick another sampler, e.g. euler_a."
        ) from None


def generate_samples(
    pipeline: Any,
    prompts: Sequence[SamplePrompt],
    *,
    step: int,
    samples_dir: str | Path,
    encode_prompt: Callable[[str], dict[str, Any]],
    device: Any,
    default_seed: int = 0,
    width: int = 512,
    height: int = 512,
    sampler: str = "ddim",
) -> list[tuple[Path, SamplePrompt]]:
    """Make one image per prompt into samples_dir/<step:06d>-<index:02d>-<seed>.png.

    `encode_prompt(text)` returns {"prompt_embeds": ...} (+ "pooled_prompt_embeds" for SDXL).
    A prompt without --d gets seed default_seed + its index. The pipeline's scheduler,
    progress bar, modules' train/eval modes, VAE device and torch's global RNG are put back.
    """
    samples_dir = Path(samples_dir)
    results = []
    with sampling_state(pipeline, device) as base_scheduler:
        for index, prompt in enumerate(prompts):
            seed = prompt.seed if prompt.seed is not None else default_seed + index
            path = samples_dir / f"{step:06d}-{index:02d}-{seed}.png"
            settings = _settings(prompt, seed, step, width, height, sampler)
            log.info(
                "sample %d/%d at step %d (seed %d, %s, %d steps): %s",
                *(index + 1, len(prompts), step, seed, settings["sampler"]),
                *(settings["steps"], prompt.prompt),
            )
            (image,) = run_pipeline(
                pipeline,
                prompt_embeddings(pipeline, encode_prompt, prompt.prompt, prompt.negative_prompt),
                base_scheduler=base_scheduler,
                seeds=[seed],
                **{key: settings[key] for key in ("sampler", "width", "height", "steps", "scale")},
            )
            save_png(image, path, settings)
            results.append((path, prompt))
    return results


@contextmanager
def sampling_state(pipeline: Any, device: Any) -> Iterator[Any]:
    """Modules in eval mode, the VAE on `device`, no progress bar, under no_grad; yields the
    pipeline's scheduler. On exit the scheduler, modules' train/eval modes, the VAE's device,
    the progress bar and torch's global RNG are put back."""
    import torch

    base_scheduler = pipeline.scheduler
    modules = [m for m in pipeline.components.values() if isinstance(m, torch.nn.Module)]
    training = [(module, module.training) for module in modules]
    vae_device = pipeline.vae.device
    rng_state = torch.get_rng_state()
    had_bar_config = hasattr(pipeline, "_progress_bar_config")
    bar_config = getattr(pipeline, "_progress_bar_config", None)
    try:
        for module in modules:
            module.eval()
        pipeline.vae.to(device)
        pipeline.set_progress_bar_config(disable=True)
        with torch.no_grad():
            yield base_scheduler
    finally:
        pipeline.scheduler = base_scheduler
        pipeline.vae.to(vae_device)
        for module, was_training in training:
            module.train(was_training)
        torch.set_rng_state(rng_state)
        if had_bar_config:
            pipeline._progress_bar_config = bar_config
        elif hasattr(pipeline, "_progress_bar_config"):
            del pipeline._progress_bar_config


def run_pipeline(
    pipeline: Any,
    embeds: dict[str, Any],
    *,
    base_scheduler: Any,
    seeds: Sequence[int],
    sampler: str,
    width: int,
    height: int,
    steps: int,
    scale: float,
) -> list[Any]:
    """One PIL image per seed from ready-made *_embeds arguments (batch 1 embeds, repeated).

    Each image's noise comes from its own CPU generator seeded with its seed, as when it is
    made alone (batched arithmetic may still differ in the last bits)."""
    import torch

    pipeline.scheduler = make_scheduler(sampler, base_scheduler)
    return pipeline(
        **embeds,
        num_images_per_prompt=len(seeds),
        width=width,
        height=height,
        num_inference_steps=steps,
        guidance_scale=scale,
        generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds],
        output_type="pil",
    ).images


def _settings(
    prompt: SamplePrompt, seed: int, step: int, width: int, height: int, sampler: str
) -> dict[str, Any]:
    """What one image is made with; also its PNG metadata. Sizes round down to a multiple
    of 8, at least 64, as sd-scripts does."""
    return {
        "prompt": prompt.prompt,
        "negative_prompt": prompt.negative_prompt,
        "seed": seed,
        "steps": prompt.steps or DEFAULT_STEPS,
        "scale": prompt.scale if prompt.scale is not None else DEFAULT_SCALE,
        "sampler": prompt.sampler or sampler,
        "width": max(MIN_SIZE, (prompt.width or width) // 8 * 8),
        "height": max(MIN_SIZE, (prompt.height or height) // 8 * 8),
        "step": step,
    }


def prompt_embeddings(
    pipeline: Any, encode_prompt: Callable[[str], dict[str, Any]], prompt: str, negative: str
) -> dict[str, Any]:
    """The pipeline's *_embeds arguments for a prompt and its negative prompt."""
    positive = encode_prompt(prompt)
    if not negative and pipeline.config.get("force_zeros_for_empty_prompt"):
        # SDXL's own behaviour for an empty negative prompt: zeros, not the encoded "".
        negative_embeds = {key: value.new_zeros(value.shape) for key, value in positive.items()}
    else:
        negative_embeds = encode_prompt(negative)
    return {**positive, **{f"negative_{key}": value for key, value in negative_embeds.items()}}


def save_png(image: Any, path: Path, settings: dict[str, Any]) -> None:
    """Write a PNG (atomically) whose text chunks hold every setting and A1111's "parameters"."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in settings.items():
        info.add_text(key, str(value))
    info.add_text("size", f"{settings['width']}x{settings['height']}")
    # A1111's "parameters" text, which image viewers and web UIs already read.
    negative = f"\nNegative prompt: {settings['negative_prompt']}"
    info.add_text(
        "parameters",
        f"{settings['prompt']}{negative if settings['negative_prompt'] else ''}\n"
        f"Steps: {settings['steps']}, Sampler: {settings['sampler']}, "
        f"CFG scale: {settings['scale']}, Seed: {settings['seed']}, "
        f"Size: {settings['width']}x{settings['height']}",
    )
    with atomic_path(path) as temporary:
        image.save(temporary, format="PNG", pnginfo=info)
