"""Captions per step as sd-scripts makes them: templates, prefix/suffix, dropout, shuffle."""

from __future__ import annotations

import random

from ti_core.data.captions import (
    OBJECT_TEMPLATES,
    STYLE_TEMPLATES,
    caption_has_token,
    prepend_token,
    process_caption,
    template_captions,
)
from ti_core.data.spec import SubsetSpec

TAGS = "demotoy, orange, toy, blue background, small, cute"


def test_templates_are_the_original_lists():
    assert len(OBJECT_TEMPLATES) == 27 and len(STYLE_TEMPLATES) == 19
    assert (
        OBJECT_TEMPLATES[0] == "a photo of a {}" and OBJECT_TEMPLATES[-1] == "a photo of a small {}"
    )
    assert STYLE_TEMPLATES[0] == "a painting in the style of {}"
    assert STYLE_TEMPLATES[-1] == "a large painting in the style of {}"
    # the style list repeats two templates, as the original does
    assert STYLE_TEMPLATES.count("a cropped painting in the style of {}") == 2
    assert template_captions("tok tok1", style=False)[2] == "a cropped photo of the tok tok1"
    assert template_captions("tok", style=True)[7] == "a picture in the style of tok"


def test_plain_subset_leaves_the_caption_alone_but_uses_only_its_first_line():
    rng = random.Random(0)
    assert process_caption("demotoy, a toy", SubsetSpec(), 1, rng) == "demotoy, a toy"
    assert process_caption("first\nsecond", SubsetSpec(), 1, rng) == "first"


def test_prefix_and_suffix_are_joined_with_spaces():
    subset = SubsetSpec(caption_prefix="photo of", caption_suffix="high quality")
    caption = process_caption("demotoy toy", subset, 1, random.Random(0))
    assert caption == "photo of demotoy toy high quality"


def test_shuffle_keeps_the_first_keep_tokens_tags_in_place():
    subset = SubsetSpec(shuffle_caption=True, keep_tokens=1)
    orders = set()
    for seed in range(20):
        caption = process_caption(TAGS, subset, 1, random.Random(seed))
        tags = caption.split(", ")
        assert tags[0] == "demotoy" and sorted(tags) == sorted(TAGS.split(", "))
        orders.add(caption)
    assert len(orders) > 10  # it really shuffles
    same_seed = [process_caption(TAGS, subset, 1, random.Random(7)) for _ in range(2)]
    assert same_seed[0] == same_seed[1]


def test_keep_tokens_separator_fixes_a_head_and_a_tail():
    subset = SubsetSpec(shuffle_caption=True, keep_tokens=5, keep_tokens_separator="|||")
    for seed in range(10):
        caption = process_caption(
            "demotoy, toy ||| a, b, c, d ||| end", subset, 1, random.Random(seed)
        )
        tags = caption.split(", ")
        assert tags[:2] == ["demotoy", "toy"] and tags[-1] == "end"
        assert sorted(tags[2:-1]) == ["a", "b", "c", "d"]


def test_other_separator_is_split_on_but_joined_with_comma_space_like_sd_scripts():
    subset = SubsetSpec(shuffle_caption=True, caption_separator=";", keep_tokens=3)
    assert process_caption("a; ;b", subset, 1, random.Random(0)) == "a, , b"


def test_caption_dropout_rate_is_deterministic_given_the_rng():
    subset = SubsetSpec(caption_dropout_rate=0.5)
    rng = random.Random(123)
    results = [process_caption("demotoy", subset, 1, rng) for _ in range(400)]
    reference = random.Random(123)
    assert results == ["" if reference.random() < 0.5 else "demotoy" for _ in range(400)]
    assert 150 < results.count("") < 250
    assert process_caption("demotoy", SubsetSpec(caption_dropout_rate=1.0), 1, rng) == ""


def test_dropout_every_n_epochs_drops_in_epochs_n_2n():
    subset = SubsetSpec(caption_dropout_every_n_epochs=2)
    kept = [process_caption("demotoy", subset, epoch, random.Random(0)) for epoch in range(1, 6)]
    assert kept == ["demotoy", "", "demotoy", "", "demotoy"]


def test_tag_dropout_never_drops_kept_tags():
    everything = SubsetSpec(caption_tag_dropout_rate=1.0, keep_tokens=1)
    assert process_caption(TAGS, everything, 1, random.Random(0)) == "demotoy"
    half = SubsetSpec(caption_tag_dropout_rate=0.5, keep_tokens=1)
    rng, reference = random.Random(5), random.Random(5)
    expected = ["demotoy"] + [t for t in TAGS.split(", ")[1:] if reference.random() >= 0.5]
    assert process_caption(TAGS, half, 1, rng) == ", ".join(expected)


def test_templates_replace_the_caption_unless_it_is_dropped():
    templates = template_captions("demotoy", style=False)
    assert process_caption("ignored", SubsetSpec(), 1, random.Random(1), templates=templates) in (
        templates
    )
    dropped = SubsetSpec(caption_dropout_rate=1.0)
    assert process_caption("x", dropped, 1, random.Random(1), templates=templates) == ""


def test_replacements_expand_the_token_for_several_vectors():
    caption = process_caption(
        "demotoy toy",
        SubsetSpec(),
        1,
        random.Random(0),
        replacements={"demotoy": "demotoy demotoy1"},
    )
    assert caption == "demotoy demotoy1 toy"


def test_token_is_found_as_a_substring_and_prepended_when_missing():
    assert caption_has_token("a photo of demotoy toy", "demotoy")
    assert caption_has_token("demotoys everywhere", "demotoy")  # sd-scripts' plain replace
    assert not caption_has_token("a photo of a toy", "demotoy")
    assert prepend_token("a photo of a toy", "demotoy") == "demotoy a photo of a toy"
    assert prepend_token("toy, orange", "demotoy") == "demotoy, toy, orange"
    assert prepend_token("demotoy toy", "demotoy") == "demotoy toy"
    assert prepend_token("", "demotoy") == "demotoy"
    assert prepend_token("toy", "demotoy", separator=", ") == "demotoy, toy"
