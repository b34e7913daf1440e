"""Captions as sd-scripts makes them for a training step: the original Textual Inversion
templates, and a caption's prefix/suffix, dropout, wildcards, tag warm-up, shuffle and
keep_tokens.

Torch-free; every random choice comes from the `random.Random` passed in.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping, Sequence

from ti_core.data.spec import SubsetSpec

# The templates of the original Textual Inversion code, as sd-scripts' train_textual_inversion.py
# lists them ("imagenet_templates_small" / "imagenet_style_templates_small"), in that order.
OBJECT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a photo of a dirty {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a photo of the {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a close-up photo of the {}",
    "a rendition of the {}",
    "a photo of the clean {}",
    "a rendition of a {}",
    "a photo of a nice {}",
    "a good photo of a {}",
    "a photo of the nice {}",
    "a photo of the small {}",
    "a photo of the weird {}",
    "a photo of the large {}",
    "a photo of a cool {}",
    "a photo of a small {}",
)
STYLE_TEMPLATES: tuple[str, ...] = (
    "a painting in the style of {}",
    "a rendering in the style of {}",
    "a cropped painting in the style of {}",
    "the painting in the style of {}",
    "a clean painting in the style of {}",
    "a dirty painting in the style of {}",
    "a dark painting in the style of {}",
    "a picture in the style of {}",
    "a cool painting in the style of {}",
    "a close-up painting in the style of {}",
    "a bright painting in the style of {}",
    "a cropped painting in the style of {}",
    "a good painting in the style of {}",
    "a close-up painting in the style of {}",
    "a rendition in the style of {}",
    "a nice painting in the style of {}",
    "a small painting in the style of {}",
    "a weird painting in the style of {}",
    "a large painting in the style of {}",
)


def template_captions(token_string: str, style: bool) -> list[str]:
    """Every template with the token filled in (--use_style_template if `style`, else
    --use_object_template). With num_vectors_per_token > 1 sd-scripts fills in all the token
    words, "tok tok1 tok2"; pass that string here."""
    return [
        template.format(token_string)
        for template in (STYLE_TEMPLATES if style else OBJECT_TEMPLATES)
    ]


def process_caption(
    caption: str,
    subset: SubsetSpec,
    epoch: int,
    rng: random.Random,
    *,
    templates: Sequence[str] | None = None,
    replacements: Mapping[str, str] | None = None,
    step: int | None = None,
    max_train_steps: int = 0,
) -> str:
    """The caption one training step sees, made as sd-scripts' BaseDataset.process_caption does.

    `epoch` counts from 1, as sd-scripts' does (caption_dropout_every_n_epochs = N drops every
    caption in epochs N, 2N, ...). `step`: the optimizer steps done before this one, for the tag
    warm-up (token_warmup_step; a share of `max_train_steps` when below 1); None (validation)
    is past any warm-up. With `templates` (use_object/style_template) a caption that is not
    dropped is replaced by a random template; `replacements` then replace substrings
    (sd-scripts' "tok" -> "tok tok1 tok2" for several vectors)."""
    if subset.caption_prefix:
        caption = subset.caption_prefix + " " + caption
    if subset.caption_suffix:
        caption = caption + " " + subset.caption_suffix

    # The rng is drawn from only where sd-scripts draws, so a seed gives the same sequence.
    dropped = subset.caption_dropout_rate > 0 and rng.random() < subset.caption_dropout_rate
    every = subset.caption_dropout_every_n_epochs
    if dropped or every > 0 and epoch % every == 0:
        return ""

    # Without wildcards sd-scripts uses the first line of a caption of several.
    first_line = caption.split("\n")[0]
    caption = pick_wildcards(caption, rng) if subset.enable_wildcard else first_line
    if (
        subset.shuffle_caption
        or subset.token_warmup_step > 0
        or subset.caption_tag_dropout_rate > 0
    ):
        warmup = warmup_steps(subset, max_train_steps)
        caption = _shuffle_and_drop_tags(caption, subset, rng, step, warmup)
    if subset.secondary_separator:
        caption = caption.replace(subset.secondary_separator, subset.caption_separator)

    if templates:
        caption = rng.choice(list(templates))
    for old, new in (replacements or {}).items():
        caption = caption.replace(old, new)
    return caption


def pick_wildcards(caption: str, rng: random.Random) -> str:
    """sd-scripts' enable_wildcard: one line of a caption of several, then each {a|b|c} replaced
    by one of its options; {{ and }} stand for literal braces."""
    if "\n" in caption:
        caption = rng.choice(caption.split("\n"))
    opening, closing = "\u2985", "\u2986"  # brackets no caption uses, longer until unused
    while opening in caption or closing in caption:
        opening, closing = opening + "\u2985", closing + "\u2986"
    caption = caption.replace("{{", opening).replace("}}", closing)
    caption = re.sub(r"\{([^}]+)\}", lambda match: rng.choice(match.group(1).split("|")), caption)
    return caption.replace(opening, "{").replace(closing, "}")


def warmup_steps(subset: SubsetSpec, max_train_steps: int) -> int:
    """The step at which the tag warm-up ends (0: no warm-up): token_warmup_step, or below 1
    that share of max_train_steps, rounded down, as sd-scripts counts it."""
    warmup = subset.token_warmup_step
    return math.floor(warmup * max_train_steps) if warmup < 1 else int(warmup)


def _shuffle_and_drop_tags(
    caption: str, subset: SubsetSpec, rng: random.Random, step: int | None, warmup: int
) -> str:
    separator = subset.caption_separator
    fixed, flex, fixed_suffix = [], [], []
    keep_separator = subset.keep_tokens_separator
    if keep_separator and keep_separator in caption:
        # "kept, tags ||| shuffled, tags ||| kept at the end": keep_tokens is not used then
        fixed_part, flex_part = caption.split(keep_separator, 1)
        if keep_separator in flex_part:
            flex_part, suffix_part = flex_part.split(keep_separator, 1)
            fixed_suffix = [tag.strip() for tag in suffix_part.split(separator) if tag.strip()]
        fixed = [tag.strip() for tag in fixed_part.split(separator) if tag.strip()]
        flex = [tag.strip() for tag in flex_part.split(separator) if tag.strip()]
    else:
        # sd-scripts keeps empty tags here ("a,,b" -> "a, , b"); so do we
        tags = [tag.strip() for tag in caption.strip().split(separator)]
        fixed, flex = tags[: subset.keep_tokens], tags[subset.keep_tokens :]

    if step is not None and warmup and step < warmup:  # the first tags only, more each step
        minimum = subset.token_warmup_min
        flex = flex[: math.floor(step * (len(flex) - minimum) / warmup) + minimum]
    if subset.shuffle_caption:
        rng.shuffle(flex)
    if subset.caption_tag_dropout_rate > 0:
        flex = [tag for tag in flex if rng.random() >= subset.caption_tag_dropout_rate]
    # sd-scripts joins with ", " whatever caption_separator is
    return ", ".join(fixed + flex + fixed_suffix)


def caption_has_token(caption: str, token_string: str) -> bool:
    """Whether training on this caption trains the embedding: sd-scripts finds the token by
    plain substring ("mytoken" is found in "mytokens, 1girl" too), so do we."""
    return token_string in caption


def prepend_token(caption: str, token_string: str, separator: str | None = None) -> str:
    """The caption with the token in front, unless it has it already. The separator defaults to
    ", " for tag-style captions (ones with a comma) and " " for sentences."""
    if caption_has_token(caption, token_string):
        return caption
    if not caption.strip():
        return token_string
    if separator is None:
        separator = ", " if "," in caption else " "
    return token_string + separator + caption
