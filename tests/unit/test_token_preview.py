"""The GUI's token preview must tokenize exactly as transformers' CLIPTokenizer, without torch."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT

from ti_core.embeddings.token_preview import _tokenizer, expand_caption, preview, token_strings
from ti_core.embeddings.tokens import add_placeholders
from ti_core.models.tokenizer import load_tokenizer

WORDS = ["a", "photo", "of", "portrait", "Masterpiece", "BEST", "girl", "dog", "sitting", "on"]
WORDS += ["the", "bench", "highres", "1girl", "solo"]
WORDS += ["looking at viewer", "don't", "it's", "they're", "we'll", "I'M", "o'clock", "Rock'n'Roll"]
PUNCTUATION = [",", ".", "!", "?", "...", ":", ";", "-", "_", "/", "\\", "'", '"', "#", "@", "%"]
WEIGHTS = ["(masterpiece:1.2)", "((best quality))", "[blurry]", "(red hair:0.8)", "<lora:foo:0.7>"]
WEIGHTS += ["\\(escaped\\)", "{curly|braces}", "BREAK", "AND"]
NUMBERS = ["4k", "8K", "1024x768", "3.14", "2024", "v2.1", "x1.5", "000", "½", "²", "٣"]
UNICODE = [
    "café",
    "naïve",
    "Ångström",
    "e\u0301te\u0301",
    "Straße",
    "Œuvre",
    "東京タワー",
    "Привет",
]
UNICODE += ["مرحبا", "ﬁne", "Ｆｕｌｌ", "İstanbul", "ǅemal", "a\u00a0b", "zero\u200bwidth", "ÉCOLE"]
EMOJI = ["🐱", "👩\u200d🚀", "🇯🇵", "❤️", "✨✨", "🏳️\u200d🌈", "🤖🎨"]
SPACES = [" ", "  ", "\t", "\n", " \n\n ", "\r\n", "\u3000", ""]
SPECIAL = ["<|endoftext|>", "<|startoftext|>", "<|ENDOFTEXT|>", "</w>"]
TOKEN = "mychar4"
TOKEN_FORMS = [TOKEN, TOKEN.upper(), "MyChar4", TOKEN + "s", "x" + TOKEN, TOKEN + "1", TOKEN * 2]
TOKEN_FORMS += [f"({TOKEN}:1.3)", f"<{TOKEN}>", TOKEN + ",", "mychar 4"]
# (token_string, num_vectors): none, sd-scripts style, diffusers style, mixed case
CONFIGS = [("", 1), (TOKEN, 1), (TOKEN, 4), ("<xq-toy>", 2), ("ZetaQx", 3)]


def _prompts(count: int = 320) -> list[str]:
    rng = random.Random(20240607)
    pools = [WORDS] * 6 + [PUNCTUATION, WEIGHTS, NUMBERS, UNICODE, EMOJI, SPECIAL, TOKEN_FORMS]
    pools += [TOKEN_FORMS, ["<xq-toy>", "<XQ-TOY>s", "zetaqx", "ZETAQX1"]]
    prompts = ["", " ", "\n", TOKEN, "a cat", "!!!", "a" * 300]
    while len(prompts) < count:
        length = rng.choice([1, 3, 8, 20, 40, 90, 250])
        parts = []
        for _ in range(length):
            parts.append(rng.choice(rng.choice(pools)))
            parts.append(rng.choice([" ", " ", " ", ", ", "", rng.choice(SPACES)]))
        prompt = "".join(parts)
        prompts.append(prompt.lower() if rng.random() < 0.2 else prompt)
    return prompts


class _Encoder:
    """Just enough of a text encoder for add_placeholders: the embedding table."""

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return torch.nn.Embedding(49408, 4)


def _reference(token_string: str, num_vectors: int):
    tokenizer = load_tokenizer()
    if not token_string:
        return tokenizer, []
    placeholders = add_placeholders(
        [tokenizer], [_Encoder()], token_string, num_vectors=num_vectors
    )
    return tokenizer, placeholders.placeholder_ids[0]


@pytest.mark.parametrize(("token_string", "num_vectors"), CONFIGS)
def test_preview_matches_clip_tokenizer(token_string, num_vectors):
    tokenizer, placeholder_ids = _reference(token_string, num_vectors)
    prompts = _prompts()
    expanded = [expand_caption(prompt, token_string, num_vectors) for prompt in prompts]
    expected = tokenizer(expanded).input_ids
    seen_placeholders = 0
    for prompt, text, ids in zip(prompts, expanded, expected, strict=True):
        result = preview(prompt, token_string, num_vectors, 225)
        assert result.problem == ""
        assert result.prompt == text
        assert result.ids == ids, repr(prompt)
        assert result.pieces == tokenizer.convert_ids_to_tokens(ids)
        flagged = [index for index, token_id in enumerate(ids) if token_id in placeholder_ids]
        assert result.placeholder_positions == flagged
        assert result.tokens_used == len(ids) - 2
        seen_placeholders += len(flagged)
    if token_string:
        assert seen_placeholders > 100  # the corpus does exercise the placeholders


def test_preview_builds_the_tokenizer_transformers_builds():
    tokenizer, _ = _reference(TOKEN, 3)
    ours = json.loads(_tokenizer(tuple(token_strings(TOKEN, 3))).to_str())
    assert ours == json.loads(tokenizer.backend_tokenizer.to_str())


def test_placeholders_are_flagged_case_blind_and_inside_words():
    result = preview("a MyChar4 photo, mychar4s", TOKEN, 2)
    assert result.prompt == "a MyChar4 photo, mychar4 mychar41s"
    assert [result.ids[i] for i in result.placeholder_positions] == [49408, 49408, 49409]
    assert result.pieces[result.placeholder_positions[0]] == "mychar4"
    assert result.texts[1:4] == ["a", "mychar4", "photo"]


def test_texts_are_readable():
    result = preview("Café 🐱!")
    assert result.texts[1:-1] == ["café", "🐱", "!"]
    assert result.pieces[1] == "cafÃ©</w>"


@pytest.mark.parametrize("budget", [75, 150, 225])
def test_tokens_are_counted_against_the_budget(budget):
    exact = preview("cat " * budget, max_token_length=budget)
    assert (exact.tokens_used, exact.budget, exact.overflows) == (budget, budget, False)
    assert preview("cat " * (budget + 1), max_token_length=budget).overflows
    # Each use of a 4-vector token string costs 4 tokens.
    result = preview(f"{TOKEN} " * 20, TOKEN, 4, budget)
    assert result.tokens_used == 80 and result.overflows == (budget < 80)
    assert len(result.placeholder_positions) == 80


def test_unusable_token_strings_are_reported_not_added():
    known = preview("a cat", "cat", 2)
    assert "already a token" in known.problem and known.placeholder_positions == []
    assert known.ids == [49406, 320, 2368, 49407]
    assert "space" in preview("a my char", "my char").problem
    assert preview("a photo").problem == ""


def test_bad_budget_is_refused():
    with pytest.raises(ValueError, match="75, 150, 225"):
        preview("a cat", max_token_length=77)


def test_preview_is_fast():
    prompts = _prompts(200)
    preview("warm up", TOKEN, 4)
    started = time.perf_counter()
    for prompt in prompts:
        preview(prompt, TOKEN, 4, 225)
    per_prompt = (time.perf_counter() - started) / len(prompts)
    assert per_prompt < 0.005, f"{per_prompt * 1000:.2f} ms per prompt"


def test_preview_imports_neither_torch_nor_transformers():
    code = (
        "import sys; from ti_core.embeddings.token_preview import preview; "
        "r = preview('a photo of mychar4', 'mychar4', 4); "
        "assert len(r.placeholder_positions) == 4; "
        "print(' '.join(sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded = set(result.stdout.split())
    assert "tokenizers" in loaded
    assert not loaded & {"torch", "transformers", "diffusers", "safetensors", "numpy"}
