"""Placeholder tokens with sd-scripts' semantics, and captions tokenized the way sd-scripts does.

`add_placeholders` adds TOKEN, TOKEN1, ... to each tokenizer and picks the vectors they start
from (init word, a starting embedding file, or a random draw). It does not touch the text
encoders: training keeps the N x dim rows as their own parameter and splices them in.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ti_core.embeddings.files import read_embedding
from ti_core.embeddings.specs import EmbeddingSpec
from ti_core.embeddings.token_preview import (
    TOKEN_BUDGETS,
    expand_caption,
    token_string_problem,
    token_strings,
)
from ti_core.errors import ConfigError, TokenError

log = logging.getLogger(__name__)

__all__ = [
    "Placeholders",
    "add_embeddings",
    "expand_all",
    "TokenizedCaptions",
    "add_placeholders",
    "text_parts",
    "token_strings",
    "tokenize_captions",
]


@dataclass
class Placeholders:
    """The new tokens and the vectors they start from."""

    token_string: str
    token_strings: list[str]  # token_string, token_string1, ... (one per vector)
    placeholder_ids: list[list[int]]  # per tokenizer: the ids of token_strings (49408... on SD)
    initial_vectors: list[Tensor]  # per text encoder: (N, dim) float32 on the CPU, own storage
    init_source: str  # where the vectors came from, for the log

    @property
    def num_vectors(self) -> int:
        return len(self.token_strings)

    def expand(self, caption: str) -> str:
        """The caption with every token_string replaced by all N strings (plain substring)."""
        return expand_caption(caption, self.token_string, self.num_vectors)


def expand_all(placeholders: Sequence[Placeholders], caption: str) -> str:
    """The caption with each embedding's token string expanded to its N strings."""
    for embedding in placeholders:
        caption = embedding.expand(caption)
    return caption


def text_parts(pipeline: Any) -> tuple[list[Any], list[Any]]:
    """A pipeline's tokenizer(s) and text encoder(s), in order (SDXL: the CLIP-L pair first)."""
    tokenizers, text_encoders = [pipeline.tokenizer], [pipeline.text_encoder]
    if getattr(pipeline, "text_encoder_2", None) is not None:
        tokenizers.append(pipeline.tokenizer_2)
        text_encoders.append(pipeline.text_encoder_2)
    return tokenizers, text_encoders


def add_placeholders(
    tokenizers: Sequence[Any],
    text_encoders: Sequence[Any],
    token_string: str,
    init_word: str = "",
    num_vectors: int | None = None,
    weights: str | Path = "",
    generator: torch.Generator | None = None,
) -> Placeholders:
    """Add the placeholder tokens to every tokenizer and choose their starting vectors.

    `num_vectors` is num_vectors_per_token when the user gave it, None when not (then 1, or
    the count in `weights`). The vectors start from, in this order of precedence:
    - `weights`, an embedding file in any format `read_embedding` reads; it sets N, and its
      widths must match the text encoders' (the init word is then ignored);
    - `init_word`: its token embeddings fill the N vectors in order, cycling when it has fewer
      tokens than N; more tokens than N is an error;
    - neither: each vector is drawn from a normal distribution with the embedding table's
      per-dimension mean and standard deviation (so it looks like a typical token, close to
      what transformers' resize_token_embeddings gives sd-scripts), using `generator`.
    Everything is checked before any tokenizer changes, so a refused call leaves them as they were.
    """
    if len(tokenizers) != len(text_encoders) or len(tokenizers) not in (1, 2):
        raise ValueError("expected one tokenizer per text encoder (one, or two for SDXL)")
    tables = [encoder.get_input_embeddings().weight.detach() for encoder in text_encoders]
    widths = [int(table.shape[1]) for table in tables]
    starting = _read_weights(weights, widths, num_vectors) if weights else None
    count = starting[0].shape[0] if starting is not None else (num_vectors or 1)
    if count < 1:
        raise TokenError(f"num_vectors_per_token must be at least 1, not {count}.")
    strings = token_strings(token_string, count)
    for tokenizer in tokenizers:
        problem = token_string_problem(
            token_string,
            count,
            tokenizer.get_vocab(),
            lambda text, tokenizer=tokenizer: tokenizer.encode(text, add_special_tokens=False),
        )
        if problem:
            raise TokenError(problem)
    init_ids: list[list[int]] = []
    if starting is not None and init_word:
        log.info("init_word %r is ignored: the vectors start from %s", init_word, weights)
    elif init_word:
        init_ids = [_init_word_ids(tokenizer, init_word, count) for tokenizer in tokenizers]

    placeholder_ids = [_add_tokens(tokenizer, strings) for tokenizer in tokenizers]
    if starting is not None:
        vectors, source = starting, f"the embedding file {weights}"
    elif init_ids:
        vectors = [
            table[_cycled(ids, count)].to("cpu", torch.float32, copy=True)
            for table, ids in zip(tables, init_ids, strict=True)
        ]
        source = f"init_word {init_word!r}"
    else:
        vectors = [_random_like(table, count, generator) for table in tables]
        source = "random vectors like the embedding table's (no init_word)"
    log.info("placeholder tokens %s: ids %s, start from %s", strings, placeholder_ids[0], source)
    return Placeholders(token_string, strings, placeholder_ids, vectors, source)


def add_embeddings(
    tokenizers: Sequence[Any],
    text_encoders: Sequence[Any],
    specs: Sequence[EmbeddingSpec],
    generator: torch.Generator | None = None,
) -> list[Placeholders]:
    """`add_placeholders` for each embedding of a run, in order (their ids follow each other)."""
    strings = [spec.token_string for spec in specs]
    if len(set(strings)) != len(strings):
        raise TokenError(f"token strings {strings}: each embedding needs its own token string.")
    return [
        add_placeholders(
            tokenizers,
            text_encoders,
            spec.token_string,
            spec.init_word,
            spec.num_vectors,
            spec.weights,
            generator=generator,
        )  # fmt: skip
        for spec in specs
    ]


def _read_weights(weights: str | Path, widths: list[int], num_vectors: int | None) -> list[Tensor]:
    embedding = read_embedding(weights)
    if len(embedding.vectors) != len(widths):
        kind = (
            "an SDXL embedding (clip_l + clip_g)"
            if embedding.is_sdxl
            else "an SD 1.x/2.x embedding"
        )
        model = "an SDXL model" if len(widths) == 2 else "an SD 1.x/2.x model"
        raise TokenError(
            f"weights {weights}: this is {kind}, but the model is {model}. "
            "Start from an embedding trained for this model family."
        )
    for name, file_width, model_width in zip(
        _encoder_names(widths), embedding.widths, widths, strict=True
    ):
        if file_width != model_width:
            raise TokenError(
                f"weights {weights}: its {name} vectors are {file_width} wide, but the model's "
                f"{name} text encoder is {model_width} wide (SD 1.x: 768, SD 2.x: 1024, "
                "SDXL: 768 + 1280). Use an embedding trained for this model."
            )
    if num_vectors is not None and num_vectors != embedding.num_vectors:
        raise TokenError(
            f"weights {weights} holds {embedding.num_vectors} vectors, but num_vectors_per_token "
            f"is {num_vectors}. Remove num_vectors_per_token (the file sets it) or set it to "
            f"{embedding.num_vectors}."
        )
    return [tensor.float().clone() for tensor in embedding.vectors]


def _encoder_names(widths: list[int]) -> list[str]:
    return ["clip_l", "clip_g"] if len(widths) == 2 else ["text encoder"]


def _init_word_ids(tokenizer: Any, init_word: str, count: int) -> list[int]:
    ids = tokenizer.encode(init_word, add_special_tokens=False)
    if not ids:
        raise TokenError(
            f"init_word {init_word!r} has no tokens. Use a real word close to the concept "
            "(e.g. 'girl', 'dog', 'painting'), or leave it empty."
        )
    if len(ids) > count:
        pieces = " ".join(tokenizer.convert_ids_to_tokens(ids))
        raise TokenError(
            f"init_word {init_word!r} is {len(ids)} tokens ({pieces}) but num_vectors_per_token "
            f"is {count}: use a shorter init_word, or set num_vectors_per_token to {len(ids)} "
            "or more."
        )
    return ids


def _cycled(ids: list[int], count: int) -> list[int]:
    """sd-scripts: vector i starts from init token i % len(init tokens)."""
    return [ids[index % len(ids)] for index in range(count)]


def _add_tokens(tokenizer: Any, strings: list[str]) -> list[int]:
    first = len(tokenizer)
    tokenizer.add_tokens(strings)
    ids = tokenizer.convert_tokens_to_ids(strings)
    if ids != list(range(first, first + len(strings))):  # sd-scripts asserts the same
        raise TokenError(
            f"the tokenizer gave the new tokens {strings} the ids {ids}, not {first}.."
            f"{first + len(strings) - 1}; choose another token_string."
        )
    return ids


def _random_like(table: Tensor, count: int, generator: torch.Generator | None) -> Tensor:
    table = table.float()
    mean, std = table.mean(dim=0).cpu(), table.std(dim=0).cpu()
    noise = torch.randn((count, table.shape[1]), generator=generator, dtype=torch.float32)
    return mean + std * noise


class TokenizedCaptions(NamedTuple):
    input_ids: Tensor  # (batch, chunks, 77) int64; chunks = max_token_length // 75
    num_truncated: int  # captions longer than max_token_length tokens, cut at the end


def tokenize_captions(
    tokenizer: Any, captions: Sequence[str], max_token_length: int = 75
) -> TokenizedCaptions:
    """Input ids exactly as sd-scripts' TokenizeStrategy._get_input_ids makes them.

    Each caption is tokenized to max_token_length + 2 ids (BOS, the tokens cut to the budget,
    EOS, then padding), and split into 75-token chunks each wrapped as BOS ... EOS/pad.
    A tokenizer that pads with its EOS (SD1, SDXL's first) gets plain chunks; one that pads with
    "!" (id 0: SD2, SDXL's second) gets sd-scripts' fix-ups: a chunk whose last token is text
    ends in EOS, and an empty chunk starts BOS EOS. (Like sd-scripts, this also acts on a
    literal "!" in the caption, as it has the pad id.)
    """
    if max_token_length not in TOKEN_BUDGETS:
        expected = ", ".join(map(str, TOKEN_BUDGETS))
        raise ConfigError(f"max_token_length = {max_token_length}: expected one of {expected}.")
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    chunk_length = tokenizer.model_max_length  # 77
    # One token past the budget is enough to tell a caption was cut (and avoids transformers'
    # "sequence length is longer than the maximum" warning for long captions).
    content = tokenizer(
        list(captions), add_special_tokens=False, truncation=True, max_length=max_token_length + 1
    )["input_ids"]
    rows, truncated = [], 0
    for ids in content:
        if len(ids) > max_token_length:
            truncated += 1
            ids = ids[:max_token_length]
        full = [bos, *ids, eos] + [pad] * (max_token_length - len(ids))
        rows.append(_chunks(full, chunk_length, eos, pad))
    if not rows:
        return TokenizedCaptions(
            torch.zeros((0, max_token_length // 75, chunk_length), dtype=torch.long), 0
        )
    return TokenizedCaptions(torch.tensor(rows, dtype=torch.long), truncated)


def _chunks(full: list[int], chunk_length: int, eos: int, pad: int) -> list[list[int]]:
    if len(full) <= chunk_length:
        return [full]
    inner = chunk_length - 2
    chunks = []
    for start in range(1, len(full) - chunk_length + 2, inner):
        chunk = [full[0], *full[start : start + inner], full[-1]]
        if pad != eos:
            if chunk[-2] not in (eos, pad):
                chunk[-1] = eos
            if chunk[1] == pad:
                chunk[1] = eos
        chunks.append(chunk)
    return chunks
