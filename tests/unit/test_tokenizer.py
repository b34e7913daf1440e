"""The vendored CLIP tokenizer must give the ids every SD model was trained with."""

from __future__ import annotations

import json

from transformers import CLIPTokenizer

from ti_core.models.assets import TOKENIZER_DIR
from ti_core.models.tokenizer import load_tokenizer


def test_a_photo_of_a_cat_has_the_clip_ids():
    tokenizer = load_tokenizer()
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_vocabulary_has_49408_entries_with_start_and_end_last():
    vocab = json.loads((TOKENIZER_DIR / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 49408
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert len(CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR))) == 49408


def test_sd2_tokenizer_pads_with_exclamation_mark():
    # SD2's OpenCLIP and SDXL's second encoder were trained with "!" (id 0) as padding.
    tokenizer = load_tokenizer("!")
    ids = tokenizer("a cat", padding="max_length", max_length=77).input_ids
    assert ids[:4] == [49406, 320, 2368, 49407] and ids[4:] == [0] * 73
    ids = load_tokenizer()("a cat", padding="max_length", max_length=77).input_ids
    assert ids[4:] == [49407] * 73


def test_licence_travels_with_the_vocabulary():
    text = (TOKENIZER_DIR / "LICENSE").read_text(encoding="utf-8")
    assert "bpe_simple_vocab_16e6" in text and "Permission is hereby granted" in text
