"""The Textual Inversion paper's two quality figures (Gal et al. 2022), at each saved step when
`clip_model` names CLIP weights on disk: CLIP-I, how much images made from "a photo of TOKEN"
look like the training images, and CLIP-T, how well images of edit prompts follow the prompt.
Both are raw cosines of CLIP embeddings, in [-1, 1] (not CLIPScore's x100 or x2.5).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ti_core.config.run_config import Config
from ti_core.config.toml_io import parse_resolution
from ti_core.errors import ConfigError
from ti_core.generation.options import DEFAULT_SCALE
from ti_core.generation.samplers import (
    parse_prompt_file,
    prompt_embeddings,
    run_pipeline,
    sampling_state,
)
from ti_core.run_folder.writer import RunFolder
from ti_core.training.samples import prompt_encoder
from ti_core.training.setup import TrainableModel

log = logging.getLogger(__name__)

IMAGE_PROMPT = "a photo of {}"  # CLIP-I: these images are compared with the training images
EDIT_PROMPTS = ("a photo of {} on the beach", "an oil painting of {}")  # CLIP-T, one image each
IMAGE_SEEDS = 2  # CLIP-I images, seeds seed, seed + 1
SCORE_STEPS = 20  # sampling steps when the sample prompts file does not say
MAX_REFERENCE_IMAGES = 16  # training images embedded once, at the first score
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
# OpenAI CLIP's pixel statistics, used when the folder has no preprocessor_config.json.
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def check_clip_model(path: str) -> None:
    """A clip_model that is not a whole CLIP model folder stops the run before training."""
    folder = Path(path)
    fix = (
        "Point it at a folder holding a whole CLIP model (config.json with model_type "
        '"clip" and its weights), e.g. openai/clip-vit-large-patch14 as downloaded, or leave '
        "it empty for no scores."
    )
    if not (folder / "config.json").is_file():
        raise ConfigError(f"clip_model = {path}: no config.json there. {fix}")
    try:
        model_type = json.loads((folder / "config.json").read_text(encoding="utf-8"))["model_type"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(
            f"clip_model = {path}: config.json is not a model config. {fix}"
        ) from None
    if model_type != "clip":
        raise ConfigError(
            f"clip_model = {path}: config.json says model_type {model_type!r}, not 'clip' "
            f"(a text or image encoder alone cannot score). {fix}"
        )
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ConfigError(f"clip_model = {path}: no weights ({', '.join(WEIGHT_FILES)}). {fix}")


def clip_i(generated: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean pairwise cosine between image embeddings (rows): generated x reference."""
    return float((F.normalize(generated, dim=-1) @ F.normalize(reference, dim=-1).T).mean())


def clip_t(images: torch.Tensor, texts: torch.Tensor) -> float:
    """Mean cosine between each image embedding and its own prompt's text embedding."""
    return float(F.cosine_similarity(images, texts, dim=-1).mean())


def class_prompt(prompt: str, class_word: str) -> str:
    """An edit prompt as CLIP reads it: the token replaced by the class word, or removed."""
    return " ".join(prompt.format(class_word).split())


class Clip:
    """A CLIP model on disk, loaded in eval mode on `device`; embeds images and texts."""

    def __init__(self, path: str, device: Any) -> None:
        from transformers import CLIPModel, CLIPTokenizer

        from ti_core.models.tokenizer import load_tokenizer

        folder = Path(path)
        self.device = device
        self.model = CLIPModel.from_pretrained(str(folder), local_files_only=True)
        self.model.to(device).eval().requires_grad_(False)
        has_vocab = (folder / "vocab.json").is_file()
        self.tokenizer = (
            CLIPTokenizer.from_pretrained(str(folder)) if has_vocab else load_tokenizer()
        )
        self.max_length = min(77, self.model.config.text_config.max_position_embeddings)
        vision = self.model.config.vision_config
        self.size, self.mean, self.std = vision.image_size, CLIP_MEAN, CLIP_STD
        processor = folder / "preprocessor_config.json"
        if processor.is_file():
            settings = json.loads(processor.read_text(encoding="utf-8"))
            self.mean = tuple(settings.get("image_mean", CLIP_MEAN))
            self.std = tuple(settings.get("image_std", CLIP_STD))

    def pixels(self, images: list[Any]) -> torch.Tensor:
        """CLIP's preprocessing: shortest side to the model's size (bicubic), centre crop,
        then the model's mean and std."""
        rows = []
        for image in images:
            image = image.convert("RGB")
            scale = self.size / min(image.size)
            width, height = (
                max(self.size, round(image.width * scale)),
                max(self.size, round(image.height * scale)),
            )
            image = image.resize((width, height), resample=3)  # PIL's BICUBIC
            left, top = (width - self.size) // 2, (height - self.size) // 2
            image = image.crop((left, top, left + self.size, top + self.size))
            data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
            rows.append(data.view(self.size, self.size, 3).permute(2, 0, 1).float() / 255)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return ((torch.stack(rows) - mean) / std).to(self.device)

    @torch.no_grad()
    def image_features(self, images: list[Any]) -> torch.Tensor:
        return _features(self.model.get_image_features(pixel_values=self.pixels(images)))

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            texts, padding="max_length", truncation=True, max_length=self.max_length,
            return_tensors="pt",
        )  # fmt: skip
        return _features(self.model.get_text_features(input_ids=tokens.input_ids.to(self.device)))


def _features(output: Any) -> torch.Tensor:
    # transformers 5 returns an output whose pooler_output is the projected embedding.
    features = output if isinstance(output, torch.Tensor) else output.pooler_output
    return features.float().cpu()


class Scores:
    """The score event of each newly saved step; CLIP loads at the first score, once."""

    def __init__(self, config: Config, run: RunFolder, model: TrainableModel) -> None:
        self.config, self.run, self.model = config, run, model
        self.clip: Clip | None = None
        self.reference: torch.Tensor | None = None  # the training images' embeddings
        self.scored: set[int] = set()

    def at(self, step: int, saved: dict[int, str]) -> None:
        """Score `step` if it was just saved (the vectors now are the saved ones)."""
        if not self.config.sampling.clip_model or step not in saved or step in self.scored:
            return
        self.scored.add(step)
        self.run.status("sampling")
        try:
            self.run.score(step=step, **self.measure())
        except Exception as error:  # noqa: BLE001 - a failed score must not end the run
            log.warning("quality scores at step %d failed: %s", step, error)
        self.run.status("training")

    def measure(self) -> dict[str, Any]:
        """CLIP-I and CLIP-T of the vectors as they are, and how many images were made."""
        pipeline = self.model.loaded.pipeline
        if self.clip is None:
            self.clip = Clip(self.config.sampling.clip_model, pipeline.unet.device)
            self.reference = self.clip.image_features(training_images(self.config))
        embedding = self.model.embeddings[0]
        seed = self.config.training.seed
        photos = self.generate(
            IMAGE_PROMPT.format(embedding.token_string), range(seed, seed + IMAGE_SEEDS)
        )
        edits = [self.generate(p.format(embedding.token_string), [seed])[0] for p in EDIT_PROMPTS]
        texts = [class_prompt(prompt, embedding.init_word) for prompt in EDIT_PROMPTS]
        return {
            "clip_i": clip_i(self.clip.image_features(photos), self.reference),
            "clip_t": clip_t(self.clip.image_features(edits), self.clip.text_features(texts)),
            "images": len(photos) + len(edits),
        }

    def generate(self, prompt: str, seeds: Any) -> list[Any]:
        """Images of `prompt` through the trainer's own sampling path, small and quick."""
        pipeline = self.model.loaded.pipeline
        width, height = parse_resolution(self.config.dataset.resolution)
        steps, scale = sampling_defaults(self.config)
        encode_prompt = prompt_encoder(self.config, self.model)
        with sampling_state(pipeline, pipeline.unet.device) as base_scheduler:
            return run_pipeline(
                pipeline,
                prompt_embeddings(pipeline, encode_prompt, prompt, ""),
                base_scheduler=base_scheduler,
                seeds=list(seeds),
                sampler=self.config.sampling.sample_sampler,
                width=max(64, width // 8 * 8),
                height=max(64, height // 8 * 8),
                steps=steps,
                scale=scale,
            )


def sampling_defaults(config: Config) -> tuple[int, float]:
    """Steps and CFG scale: the sample prompts file's first prompt's, else 20 and 7.5."""
    if config.sampling.sample_prompts and Path(config.sampling.sample_prompts).is_file():
        first = parse_prompt_file(config.sampling.sample_prompts)[0]
        return first.steps or SCORE_STEPS, first.scale if first.scale is not None else DEFAULT_SCALE
    return SCORE_STEPS, DEFAULT_SCALE


def training_images(config: Config) -> list[Any]:
    """The first training images (not regularization ones), opened, at most 16."""
    from PIL import Image

    from ti_core.data.run_data import dataset_specs
    from ti_core.data.sources import discover_images

    paths = [
        entry.path
        for spec in dataset_specs(config)
        for entry in discover_images(spec)[0]
        if not entry.subset.is_reg
    ]
    images = []
    for path in sorted(set(paths))[:MAX_REFERENCE_IMAGES]:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    return images
