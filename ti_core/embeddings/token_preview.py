"""How a prompt tokenizes, fast enough for every keystroke in the GUI, and without torch.

It builds the same `tokenizers.Tokenizer` that transformers' CLIPTokenizer builds from the
vendored vocabulary (transformers 5, models/clip/tokenization_clip.py), adds placeholder tokens
the way `ti_core.embeddings.tokens` adds them, and counts the tokens against the
max_token_length budget.
The naming rules for placeholder tokens live here too, so the engine and the GUI share them.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers import processors as post_processors
from tokenizers.models import BPE

TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "assets" / "tokenizer"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
TOKEN_BUDGETS = (75, 150, 225)  # sd-scripts' max_token_length: 1, 2 or 3 chunks of 75
EXAMPLE_TOKEN = "mychar4"


def token_strings(token_string: str, num_vectors: int) -> list[str]:
    """sd-scripts' placeholder names: TOKEN, TOKEN1, ..., TOKEN{N-1} (one per vector)."""
    return [token_string] + [f"{token_string}{index}" for index in range(1, num_vectors)]


def expand_caption(caption: str, token_string: str, num_vectors: int) -> str:
    """Replace every occurrence of the token string by the N placeholder strings.

    A plain substring replace, as sd-scripts does: "mychar4s" becomes "mychar4 ... mychar43s".
    It is case-sensitive, while the tokenizer matches placeholders case-insensitively, so a
    caption saying "MyChar4" for token string "mychar4" gets only the first vector.
    """
    if not token_string or num_vectors <= 1:
        return caption
    return caption.replace(token_string, " ".join(token_strings(token_string, num_vectors)))


def token_string_problem(
    token_string: str,
    num_vectors: int,
    vocab: Mapping[str, int],
    encode: Callable[[str], list[int]],
) -> str:
    """Why this token string cannot name new placeholders ("" when it can).

    `vocab` is the tokenizer's vocabulary including added tokens; `encode` tokenizes without
    BOS/EOS. sd-scripts refuses a token string when `add_tokens` adds fewer than N tokens, i.e.
    when one of the strings is already in the vocabulary. Current tokenizers no longer report
    that (adding "cat" reuses its id and silently changes how "cat" tokenizes), so we check
    before adding: a string in the vocabulary (as is, or lower-cased as the tokenizer matches
    it, or as a whole word "…</w>"), or a token string that is already one token.
    """
    advice = f"Choose a made-up word that is no real word, such as '{EXAMPLE_TOKEN}'."
    if not token_string:
        return f"token_string is empty: captions need a word for the concept. {advice}"
    if any(character.isspace() for character in token_string):
        return f"token_string {token_string!r} contains a space; it must be one word. {advice}"
    ids = encode(token_string)
    if len(ids) == 1:
        return (
            f"token_string {token_string!r} is already a token the tokenizer knows (id {ids[0]}); "
            f"training it would change that word in every prompt. {advice}"
        )
    for string in token_strings(token_string, num_vectors):
        matched = unicodedata.normalize("NFC", string).lower()
        for candidate in (string, matched, f"{matched}</w>"):
            if candidate in vocab:
                return (
                    f"token_string {token_string!r}: {string!r} is already in the tokenizer's "
                    f"vocabulary (id {vocab[candidate]}), so it cannot become a new token. {advice}"
                )
    return ""


@dataclass(frozen=True)
class TokenPreview:
    """What the text encoder would see for one prompt."""

    prompt: str  # as tokenized: the token string expanded to its N placeholder strings
    ids: list[int]  # <|startoftext|> ... <|endoftext|>, nothing cut off
    pieces: list[str]  # the vocabulary entry of each id ("photo</w>", "mychar4")
    texts: list[str]  # each piece as readable text (bytes decoded, "</w>" dropped)
    placeholder_positions: list[int]  # indices into `ids` that are new placeholder tokens
    tokens_used: int  # tokens between BOS and EOS
    budget: int  # max_token_length: 75, 150 or 225
    overflows: bool  # tokens past the budget are cut off in training
    problem: str  # why the token string cannot be used ("" when it can, or when none is given)


def preview(
    prompt: str, token_string: str = "", num_vectors: int = 1, max_token_length: int = 75
) -> TokenPreview:
    """Tokenize `prompt` as training would, with `token_string` expanded to N placeholders.

    A token string that `ti_core.embeddings.tokens` would refuse is reported in `problem`, and
    the prompt is then tokenized without placeholders. The first call loads the vocabulary
    (~0.1 s), and so does the first call with each new token string; then a prompt takes
    well under 1 ms.
    """
    if max_token_length not in TOKEN_BUDGETS:
        raise ValueError(f"max_token_length must be one of {TOKEN_BUDGETS}, not {max_token_length}")
    problem = ""
    strings: tuple[str, ...] = ()
    if token_string:
        problem = _problem(token_string, num_vectors)
        if not problem:
            strings = tuple(token_strings(token_string, num_vectors))
            prompt = expand_caption(prompt, token_string, num_vectors)
    encoding = _tokenizer(strings).encode(prompt)
    ids = list(encoding.ids)
    first_placeholder = len(_base_vocab())
    placeholders = [index for index, token_id in enumerate(ids) if token_id >= first_placeholder]
    pieces = list(encoding.tokens)
    texts = [
        piece if token_id >= first_placeholder else _readable(piece)
        for token_id, piece in zip(ids, pieces, strict=True)
    ]
    used = len(ids) - 2
    return TokenPreview(
        prompt=prompt,
        ids=ids,
        pieces=pieces,
        texts=texts,
        placeholder_positions=placeholders,
        tokens_used=used,
        budget=max_token_length,
        overflows=used > max_token_length,
        problem=problem,
    )


@functools.lru_cache(maxsize=8)
def _tokenizer(placeholder_strings: tuple[str, ...]) -> Tokenizer:
    """The CLIP tokenizer, with these placeholders added (ids 49408...); never mutated later."""
    tokenizer = Tokenizer(
        BPE(
            vocab=str(TOKENIZER_DIR / "vocab.json"),
            merges=str(TOKENIZER_DIR / "merges.txt"),
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="</w>",
            fuse_unk=False,
            unk_token=EOS,
        )
    )
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    words = (
        r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d"""
        r"""|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(words), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in (BOS, EOS)]
    )
    tokenizer.post_processor = post_processors.RobertaProcessing(
        (EOS, tokenizer.token_to_id(EOS)), (BOS, tokenizer.token_to_id(BOS)), False, False
    )
    # What transformers' add_tokens(["mychar4", ...]) adds: normalized, so matched case-blind.
    tokenizer.add_tokens(
        [
            AddedToken(string, single_word=False, lstrip=False, rstrip=False, normalized=True)
            for string in placeholder_strings
        ]
    )
    return tokenizer


@functools.lru_cache(maxsize=64)
def _problem(token_string: str, num_vectors: int) -> str:
    base = _tokenizer(())
    return token_string_problem(
        token_string,
        num_vectors,
        _base_vocab(),
        lambda text: base.encode(text, add_special_tokens=False).ids,
    )


@functools.lru_cache(maxsize=1)
def _base_vocab() -> dict[str, int]:
    return _tokenizer(()).get_vocab(with_added_tokens=True)


@functools.lru_cache(maxsize=1)
def _byte_of_character() -> dict[str, int]:
    """Inverse of GPT-2's byte-to-unicode table, which byte-level BPE pieces are written in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    characters = {byte: chr(byte) for byte in printable}
    shifted = 0
    for byte in range(256):
        if byte not in characters:
            characters[byte] = chr(256 + shifted)
            shifted += 1
    return {character: byte for byte, character in characters.items()}


@functools.lru_cache(maxsize=8192)
def _readable(piece: str) -> str:
    if piece in (BOS, EOS):
        return piece
    table = _byte_of_character()
    word = piece.removesuffix("</w>")
    if not all(character in table for character in word):
        return word
    return bytes(table[character] for character in word).decode("utf-8", errors="replace")
