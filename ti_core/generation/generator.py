"""Make images with a base model and any number of textual-inversion embeddings.

The model loads once. Embeddings come and go without reloading it: the vocabulary table stays
as it is, and all loaded embeddings' vectors are spliced in as consecutive new ids after it
(the same splice training uses), rebuilt whenever the set changes. A multi-vector embedding
NAME adds sd-scripts' token words NAME, NAME1, ... and a prompt's NAME expands to all of them.
"""

from __future__ import annotations

import copy
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ti_core.embeddings.files import Embedding
from ti_core.embeddings.text_encoding import TrainableTokens, encode, install_trainable_tokens
from ti_core.embeddings.token_preview import TOKEN_BUDGETS, token_string_problem, token_strings
from ti_core.embeddings.tokens import text_parts, tokenize_captions
from ti_core.errors import ConfigError, TiError
from ti_core.generation.options import MAX_SEED, MIN_SIZE, GenerateOptions, options_from
from ti_core.generation.samplers import prompt_embeddings, run_pipeline, sampling_state, save_png

log = logging.getLogger(__name__)

ENCODER_NAMES = {1: ["text encoder"], 2: ["CLIP-L", "CLIP-G"]}


@dataclass
class LoadedEmbedding:
    """An embedding in use: its trigger word, the token words it adds, and its vectors."""

    trigger: str
    path: str  # "" for vectors given directly
    format: str
    vectors: list[Tensor]  # one (N, D) float32 tensor per text encoder

    @property
    def token_words(self) -> list[str]:
        return token_strings(self.trigger, int(self.vectors[0].shape[0]))

    def describe(self) -> dict[str, Any]:
        return {
            "trigger": self.trigger,
            "path": self.path,
            "format": self.format,
            "num_vectors": int(self.vectors[0].shape[0]),
            "tokens": self.token_words,
        }


class Generator:
    """A loaded base model plus the embeddings to use in prompts."""

    def __init__(
        self,
        model: str,
        *,
        v2: bool = False,
        v_parameterization: bool = False,
        vae: str = "",
        device: str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        from ti_core.models.devices import choose_device
        from ti_core.models.loading import load_model

        # On a CPU, choose_device also limits torch to half the cores: a generation worker
        # beside a training run slowed from ~1 s to 4-20 s per demo image with all of them.
        self.device = torch.device(device) if device else choose_device()
        self.loaded = load_model(model, v2, v_parameterization, vae, dtype=dtype)
        self.pipeline = self.loaded.pipeline.to(self.device)
        self.family = self.loaded.family
        self.base_tokenizers, self.text_encoders = text_parts(self.pipeline)
        self.tables = [_vocabulary_table(encoder) for encoder in self.text_encoders]
        self.tokenizers = list(self.base_tokenizers)
        self.embeddings: dict[str, LoadedEmbedding] = {}

    # -- embeddings -------------------------------------------------------------------------

    @property
    def widths(self) -> list[int]:
        return [table.embedding_dim for table in self.tables]

    def vocabularies(self) -> list[tuple[Any, Tensor]]:
        """(base tokenizer, vocabulary table) per text encoder, for inspect_embedding."""
        return [
            (t, table.weight) for t, table in zip(self.base_tokenizers, self.tables, strict=True)
        ]

    def add_embedding(self, path: str | Path, trigger: str | None = None) -> LoadedEmbedding:
        """Load an embedding file (any layout FORMATS.md lists); `trigger` defaults to the file
        stem. A file that does not fit the model, or a trigger already in use, is refused."""
        from ti_core.embeddings.writers import read_with_second_encoder

        embedding, _ = read_with_second_encoder(path)
        return self.add_vectors(
            trigger or embedding.name,
            embedding.vectors,
            path=str(path),
            file_format=embedding.format,
            embedding=embedding,
        )

    def add_vectors(
        self,
        trigger: str,
        vectors: list[Tensor],
        *,
        path: str = "",
        file_format: str = "vectors",
        embedding: Embedding | None = None,
    ) -> LoadedEmbedding:
        """Use `vectors` (one (N, D) tensor per text encoder) for the word `trigger`."""
        where = path or f"the vectors for {trigger!r}"
        vectors = [v.unsqueeze(0) if v.dim() == 1 else v for v in vectors]
        self._check_fits(where, vectors, embedding)
        loaded = LoadedEmbedding(trigger, path, file_format, [v.detach().float() for v in vectors])
        self._check_trigger(where, loaded)
        self.embeddings[trigger] = loaded
        try:
            self._splice()
        except Exception:
            del self.embeddings[trigger]
            self._splice()
            raise
        log.info("embedding %s: %s", trigger, ", ".join(loaded.token_words))
        return loaded

    def remove_embedding(self, trigger: str) -> None:
        if trigger not in self.embeddings:
            raise TiError(f"no embedding with trigger {trigger!r} is loaded; {self._in_use()}.")
        del self.embeddings[trigger]
        self._splice()

    def _in_use(self) -> str:
        if not self.embeddings:
            return "none are loaded"
        return "loaded: " + ", ".join(sorted(self.embeddings))

    def _check_fits(self, where: str, vectors: list[Tensor], embedding: Embedding | None) -> None:
        widths = [int(v.shape[-1]) for v in vectors]
        shapes_ok = all(v.dim() == 2 and len(v) > 0 for v in vectors)
        if widths == self.widths and shapes_ok and len({len(v) for v in vectors}) == 1:
            return
        model = f"{self.loaded.describe()} needs {_describe_widths(self.widths)}"
        found = _describe_widths(widths)
        if embedding is not None:
            found += f" ({_family_guess(widths)} embedding)"
        raise TiError(
            f"{where}: this embedding has {found}, but the model {model}. "
            "Use an embedding trained for this model family."
        )

    def _check_trigger(self, where: str, new: LoadedEmbedding) -> None:
        in_use = {
            word.lower(): e.trigger for e in self.embeddings.values() for word in e.token_words
        }
        for word in new.token_words:
            if word.lower() in in_use:
                raise TiError(
                    f"{where}: the trigger word {word!r} is already used by embedding "
                    f"{in_use[word.lower()]!r}. Remove that one first or give another trigger."
                )
        tokenizer = self.base_tokenizers[0]
        problem = token_string_problem(
            new.trigger,
            len(new.token_words),
            tokenizer.get_vocab(),
            lambda text: tokenizer(text, add_special_tokens=False)["input_ids"],
        )
        if problem:
            raise TiError(f"{where}: {problem} Pass another trigger for this file.")

    def _splice(self) -> None:
        """Fresh tokenizers knowing every loaded token word, and the encoders' lookups with all
        loaded vectors as consecutive ids after the vocabulary."""
        words = [word for e in self.embeddings.values() for word in e.token_words]
        self.tokenizers = []
        for index, (base, encoder, table) in enumerate(
            zip(self.base_tokenizers, self.text_encoders, self.tables, strict=True)
        ):
            tokenizer = copy.deepcopy(base)
            if not words:
                encoder.set_input_embeddings(table)
                self.tokenizers.append(tokenizer)
                continue
            first = len(tokenizer)
            tokenizer.add_tokens(words)
            ids = tokenizer.convert_tokens_to_ids(words)
            if ids != list(range(first, first + len(words))) or first != table.num_embeddings:
                raise TiError(f"the tokenizer gave the token words {words} unexpected ids {ids}.")
            vectors = torch.cat([e.vectors[index] for e in self.embeddings.values()])
            install_trainable_tokens(encoder, ids, vectors.to(table.weight.dtype))
            encoder.get_input_embeddings().requires_grad_(False)
            self.tokenizers.append(tokenizer)

    # -- prompts ----------------------------------------------------------------------------

    def expand(self, prompt: str) -> str:
        """Each multi-vector trigger replaced by its N token words, in one pass (so one trigger
        inside another's expansion is left alone); a plain substring match, as sd-scripts."""
        multi = sorted((t for t, e in self.embeddings.items() if len(e.token_words) > 1), key=len)
        if not multi:
            return prompt
        pattern = re.compile("|".join(re.escape(trigger) for trigger in reversed(multi)))
        return pattern.sub(lambda m: " ".join(self.embeddings[m.group(0)].token_words), prompt)

    def count_tokens(self, prompt: str) -> int:
        """Tokens the prompt takes (BOS/EOS not counted), after expanding triggers."""
        return len(self.tokenizers[0].tokenize(self.expand(prompt)))

    def encode_prompt(
        self, prompt: str, clip_skip: int = 1, max_token_length: int = 75
    ) -> dict[str, Any]:
        """The pipeline's prompt_embeds (+ pooled_prompt_embeds for SDXL) for one prompt."""
        caption = self.expand(prompt)
        input_ids = [
            tokenize_captions(tokenizer, [caption], max_token_length).input_ids
            for tokenizer in self.tokenizers
        ]
        condition = encode(self.family, self.text_encoders, input_ids, clip_skip)
        embeds = {"prompt_embeds": condition.context}
        if condition.pooled is not None:
            embeds["pooled_prompt_embeds"] = condition.pooled
        return embeds

    # -- images -----------------------------------------------------------------------------

    def generate(
        self, options: GenerateOptions | None = None, /, **fields: Any
    ) -> list[tuple[Any, dict[str, Any]]]:
        """batch_count x batch_size images of `options` (the defaults where None), any of its
        fields also given by name: generate(prompt="a photo of NAME", steps=20). Image i gets
        seed + i (a random first seed when seed is negative). Returns (PIL image, settings)
        pairs; settings are what the PNG metadata records."""
        options = options_from(fields, options)
        if not options.prompt.strip():
            raise ConfigError("the prompt is empty. Describe the image, e.g. 'a photo of NAME'.")
        warnings = [
            warning
            for text, label in (
                (options.prompt, "prompt"),
                (options.negative_prompt, "negative prompt"),
            )
            if (warning := self._cut_warning(text, label, options.max_token_length))
        ]
        for warning in warnings:
            log.warning("%s", warning)
        first_seed = random.randint(0, MAX_SEED) if options.seed < 0 else options.seed
        settings = {
            "prompt": options.prompt,
            "negative_prompt": options.negative_prompt,
            "steps": options.steps,
            "scale": options.scale,
            "sampler": options.sampler,
            "width": max(MIN_SIZE, options.width // 8 * 8),
            "height": max(MIN_SIZE, options.height // 8 * 8),
            "clip_skip": options.clip_skip,
            "max_token_length": options.max_token_length,
            "model": self.loaded.source,
            "embeddings": ", ".join(sorted(self.embeddings)),
        }
        results = []
        with sampling_state(self.pipeline, self.device) as base_scheduler:
            embeds = prompt_embeddings(
                self.pipeline,
                lambda text: self.encode_prompt(text, options.clip_skip, options.max_token_length),
                options.prompt,
                options.negative_prompt,
            )
            size = options.batch_size
            for batch in range(options.batch_count):
                seeds = [first_seed + batch * size + i for i in range(size)]
                images = run_pipeline(
                    self.pipeline,
                    embeds,
                    base_scheduler=base_scheduler,
                    seeds=seeds,
                    **{k: settings[k] for k in ("sampler", "width", "height", "steps", "scale")},
                )
                for image, image_seed in zip(images, seeds, strict=True):
                    results.append((image, {**settings, "seed": image_seed, "warnings": warnings}))
        return results

    def _cut_warning(self, text: str, label: str, max_token_length: int) -> str:
        count = self.count_tokens(text)
        if count <= max_token_length:
            return ""
        hint = (
            f" Use max_token_length {min(b for b in TOKEN_BUDGETS if b >= count)} to keep them."
            if count <= TOKEN_BUDGETS[-1]
            else " Shorten it."
        )
        return (
            f"the {label} is {count} tokens; max_token_length {max_token_length} cut the last "
            f"{count - max_token_length} tokens.{hint}"
        )


def save_images(results: list[tuple[Any, dict[str, Any]]], outdir: str | Path) -> list[Path]:
    """Write each image as outdir/NNNNN-SEED.png (numbering after what is there), with its
    prompt and settings in the PNG's text metadata."""
    outdir = Path(outdir)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TiError(f"{outdir}: cannot create the output folder ({error}).") from None
    numbers = [int(p.name[:5]) for p in outdir.glob("*.png") if p.name[:5].isdigit()]
    next_number = max(numbers, default=-1) + 1
    paths = []
    for offset, (image, settings) in enumerate(results):
        path = outdir / f"{next_number + offset:05d}-{settings['seed']}.png"
        save_png(image, path, {k: v for k, v in settings.items() if k != "warnings"})
        paths.append(path)
    return paths


def _vocabulary_table(encoder: Any) -> torch.nn.Embedding:
    current = encoder.get_input_embeddings()
    return current.table if isinstance(current, TrainableTokens) else current


def _describe_widths(widths: list[int]) -> str:
    if len(widths) == 1:
        return f"vectors {widths[0]} wide (one text encoder)"
    names = ENCODER_NAMES.get(len(widths), [f"encoder {i + 1}" for i in range(len(widths))])
    parts = " + ".join(f"{width} ({name})" for width, name in zip(widths, names, strict=False))
    return f"vectors {parts} wide ({len(widths)} text encoders)"


def _family_guess(widths: list[int]) -> str:
    if widths == [768, 1280]:
        return "an SDXL"
    if widths == [768]:
        return "an SD 1.x"
    if widths == [1024]:
        return "an SD 2.x"
    return "an unknown model's"
