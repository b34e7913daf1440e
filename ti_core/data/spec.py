"""What a dataset is, after reading any of its sources (sd-scripts dataset TOML, DreamBooth
folders, fine-tune metadata): plain data shared by discovery, checks, buckets and batching.

Every key a dataset TOML may set is declared here, once, with `opt()` (type, default, limits,
help, and the `levels` it may appear at). The keys that are run options too ([dataset] in the
run config, --flags, GUI widgets) are those of CaptionOptions, MaskOptions and BucketOptions,
which the run config's DatasetConfig inherits. No torch here: the GUI's dataset doctor uses
these too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ti_core.config.options import FILE, FOLDER, opt
from ti_core.errors import ConfigError

GENERAL, DATASET, SUBSET = "general", "dataset", "subset"  # the tables of a dataset TOML
ANY_LEVEL = (GENERAL, DATASET, SUBSET)
DATASET_LEVEL = (GENERAL, DATASET)  # shared by the subsets of one [[datasets]]
MIN_RESOLUTION = 64  # pixels a side: an 8x8 latent, which the UNet's 3 down-samplings take to 1x1
# sd-scripts' resize_interpolation names ("" = its default: area when shrinking, else lanczos)
RESIZE_INTERPOLATIONS = ("", "lanczos", "nearest", "bilinear", "linear", "bicubic", "cubic",
                         "area", "box")  # fmt: skip


def parse_resolution(
    value: str | int | Sequence[int], where: str = "resolution"
) -> tuple[int, int]:
    """A training resolution as (width, height): sd-scripts' --resolution text ("512" or
    "768,512", the run config's form) or a dataset TOML's 512 or [768, 512]."""
    plain = isinstance(value, (str, int, list, tuple))
    shown = json.dumps(value, ensure_ascii=False) if plain else repr(value)
    if isinstance(value, str):
        parts = [part.strip() for part in value.split(",")]
        if len(parts) not in (1, 2) or not all(part.isdigit() for part in parts):
            raise ConfigError(
                f"{where} = {shown}: expected SIZE or WIDTH,HEIGHT in pixels, "
                'e.g. "512" or "768,512".'
            )
        sizes = [int(part) for part in parts]
    else:
        sizes = list(value) if isinstance(value, (list, tuple)) else [value]
        whole = all(isinstance(size, int) and not isinstance(size, bool) for size in sizes)
        if len(sizes) not in (1, 2) or not whole:
            raise ConfigError(f"{where} = {shown}: expected a size (512) or [width, height].")
    width, height = sizes[0], sizes[-1]
    if min(width, height) < MIN_RESOLUTION:
        raise ConfigError(f"{where} = {shown}: expected at least {MIN_RESOLUTION} pixels per side.")
    return width, height


def parse_face_crop_range(
    value: str | Sequence[float], where: str = "face_crop_aug_range"
) -> tuple[float, float] | None:
    """face_crop_aug_range as (low, high): the run config's text "2.0,4.0" or a dataset TOML's
    [2.0, 4.0]; "" (off) is None. sd-scripts asks 0 < low <= high."""
    if isinstance(value, str) and not value.strip():
        return None
    parts = value.split(",") if isinstance(value, str) else value
    numbers = []
    for part in parts if isinstance(parts, (list, tuple)) and len(parts) == 2 else []:
        try:
            numbers.append(float("nan") if isinstance(part, bool) else float(part))
        except (TypeError, ValueError):
            numbers.append(float("nan"))
    if len(numbers) != 2 or not 0 < numbers[0] <= numbers[1]:  # also false for nan
        shown = json.dumps(value) if isinstance(value, (str, list, tuple)) else repr(value)
        raise ConfigError(
            f"{where} = {shown}: expected two numbers LOW,HIGH with 0 < LOW <= HIGH, e.g. "
            '"2.0,4.0" (in a dataset TOML: [2.0, 4.0]).'
        )
    return numbers[0], numbers[1]


@dataclass
class Problem:
    """Something wrong with a dataset, found while reading or checking it. Errors stop a run
    (sd-scripts would fail or train on nothing); warnings are shown and training goes on."""

    severity: str  # "error" | "warning"
    code: str  # the kind, stable for tests and the GUI: "missing_folder", "not_utf8", ...
    message: str  # what is wrong, the same for every file of this kind
    path: str = ""  # the file or folder concerned
    detail: str = ""  # what is particular to this file ("byte 0xe9 at position 12")
    hint: str = ""  # what to do about it
    where: str = ""  # the subset or dataset, as in SubsetSpec.where


@dataclass
class BucketOptions:
    """The [[datasets]] keys that are run options too: size and aspect-ratio buckets."""

    resolution: str = opt(
        "512", "Training resolution: 'SIZE' or 'WIDTH,HEIGHT'.", levels=DATASET_LEVEL
    )
    enable_bucket: bool = opt(
        False, "Group images by aspect ratio into buckets.", levels=DATASET_LEVEL
    )
    min_bucket_reso: int = opt(256, "Smallest bucket side in pixels.", min=64, levels=DATASET_LEVEL)
    max_bucket_reso: int = opt(1024, "Largest bucket side in pixels.", min=64, levels=DATASET_LEVEL)
    bucket_reso_steps: int = opt(
        64, "Bucket sides are multiples of this.", min=8, levels=DATASET_LEVEL
    )
    bucket_no_upscale: bool = opt(
        False, "Never upscale an image to fit a bucket.", levels=DATASET_LEVEL
    )


@dataclass
class ValidationOptions:
    """The [[datasets]] keys that choose the validation images (sd-scripts' names)."""

    validation_split: float = opt(
        0.0,
        "Share of each dataset's training images held out for the validation loss (0 = measure "
        "it on a fixed few of the training images instead).",
        min=0.0,
        max=0.9,
        levels=DATASET_LEVEL,
    )
    validation_seed: int = opt(
        -1,
        "Seed of the held-out choice and of the validation noise (-1 = the run's seed).",
        min=-1,
        levels=DATASET_LEVEL,
    )


@dataclass
class CaptionOptions:
    """The [[datasets.subsets]] keys that are run options too: captions, augmentation and how
    images are read. Like sd-scripts, a dataset TOML may also set them in [[datasets]] or
    [general]."""

    caption_extension: str = opt(
        ".caption", "Extension of caption files next to images.", levels=ANY_LEVEL
    )
    shuffle_caption: bool = opt(False, "Shuffle comma-separated caption tags.", levels=ANY_LEVEL)
    keep_tokens: int = opt(
        0, "Keep the first N caption tags in place when shuffling.", min=0, levels=ANY_LEVEL
    )
    flip_aug: bool = opt(False, "Randomly mirror images.", levels=ANY_LEVEL)
    color_aug: bool = opt(False, "Randomly shift image hue.", levels=ANY_LEVEL)
    random_crop: bool = opt(
        False, "Crop at a random place instead of the centre.", levels=ANY_LEVEL
    )
    caption_dropout_rate: float = opt(
        0.0,
        "Chance of training an image with an empty caption.",
        min=0.0,
        max=1.0,
        levels=ANY_LEVEL,
    )
    caption_dropout_every_n_epochs: int = opt(
        0, "Train every N-th epoch with empty captions (0 = off).", min=0, levels=ANY_LEVEL
    )
    caption_tag_dropout_rate: float = opt(
        0.0, "Chance of dropping each caption tag.", min=0.0, max=1.0, levels=ANY_LEVEL
    )
    caption_separator: str = opt(",", "What separates caption tags.", levels=ANY_LEVEL)
    keep_tokens_separator: str = opt(
        "", "Tags before this separator stay in place when shuffling.", levels=ANY_LEVEL
    )
    caption_prefix: str = opt("", "Text put before every caption.", levels=ANY_LEVEL)
    caption_suffix: str = opt("", "Text put after every caption.", levels=ANY_LEVEL)
    secondary_separator: str = opt(
        "", "A separator that shuffling does not split at; it becomes caption_separator after "
        'shuffling (e.g. ";;;").', levels=ANY_LEVEL,
    )  # fmt: skip
    enable_wildcard: bool = opt(
        False, "Captions may say {a|b|c}: each step picks one; a caption file of several lines "
        "gives one line, picked each step.", levels=ANY_LEVEL,
    )  # fmt: skip
    token_warmup_min: int = opt(
        1, "Caption tag warm-up: how many tags (after the kept ones) train at step 0.", min=0,
        levels=ANY_LEVEL,
    )  # fmt: skip
    token_warmup_step: float = opt(
        0.0, "Caption tag warm-up: the step from which every tag trains, more tags each step "
        "until then; below 1, a share of all steps (0 = no warm-up).", min=0.0,
        levels=ANY_LEVEL,
    )  # fmt: skip
    face_crop_aug_range: str = opt(
        "", 'Face crop augmentation "LOW,HIGH", e.g. "2.0,4.0": an image named '
        "NAME_cx_cy_w_h (its face's centre and size, as sd-scripts' detect_face_rotate.py "
        "names them) is shrunk at random so the face is 1/HIGH to 1/LOW of the training "
        "size, then cropped around the face. Only without enable_bucket. In a dataset TOML: "
        "[2.0, 4.0].", levels=ANY_LEVEL,
    )  # fmt: skip
    resize_interpolation: str = opt(
        "", "Resize filter (empty: area average when shrinking, else lanczos).",
        choices=RESIZE_INTERPOLATIONS, levels=ANY_LEVEL,
    )  # fmt: skip
    cache_info: bool = opt(
        False, "Keep each folder's image sizes and captions in metadata_cache.json and trust "
        "them on later runs: the images are not opened before training.", levels=ANY_LEVEL,
    )  # fmt: skip


@dataclass
class MaskOptions:
    """The [[datasets.subsets]] keys about loss masks that are run options too."""

    alpha_mask: bool = opt(
        False,
        "Weigh the loss of each pixel by the image's transparency (alpha 0 = not learned, "
        "255 = fully); images without alpha weigh 1 everywhere.",
        levels=ANY_LEVEL,
    )


@dataclass
class SubsetSpec(MaskOptions, CaptionOptions):
    """One [[datasets.subsets]] entry (or one N_name folder), after general -> dataset ->
    subset inheritance. Field names and defaults are sd-scripts'."""

    image_dir: str = opt(
        "", "Folder of this subset's images and caption files.", path=FOLDER, levels=(SUBSET,)
    )
    metadata_file: str = opt(
        "",
        'Fine-tuning metadata JSON: {image_key: {"caption": ..., "tags": ...}}.',
        path=FILE,
        suffixes=(".json",),
        levels=(SUBSET,),
    )
    num_repeats: int = opt(1, "How many times each image counts per epoch.", levels=ANY_LEVEL)
    is_reg: bool = opt(
        False,
        "Regularization images: their loss is weighted by prior_loss_weight.",
        levels=(SUBSET,),
    )
    class_tokens: str = opt("", "Caption of images without a caption file.", levels=ANY_LEVEL)
    conditioning_data_dir: str = opt(
        "",
        "Folder of loss masks, one per image with the image's file name stem (any image "
        "type): the red channel (or grey) is each pixel's loss weight, black 0 to white 1. "
        "Needs masked_loss.",
        path=FOLDER,
        levels=(SUBSET,),
    )
    where: str = ""  # for messages: "dataset.toml: datasets[0].subsets[1]" or "folder 10_cat"


@dataclass
class DatasetSpec(ValidationOptions, BucketOptions):
    """One [[datasets]] entry: its subsets share resolution, batch size and buckets."""

    subsets: list[SubsetSpec] = field(default_factory=list)
    # Declared in BucketOptions as the text a person writes; a spec holds it parsed.
    resolution: tuple[int, int] = parse_resolution(BucketOptions.resolution)  # (width, height)
    batch_size: int = opt(1, "Images per step.", min=1, levels=DATASET_LEVEL)
    where: str = ""
    # Problems found while reading the source itself (a folder without the N_ prefix, a missing
    # train_data_dir); discover_images passes them on with the ones it finds.
    problems: list[Problem] = field(default_factory=list)


@dataclass
class ImageEntry:
    """One training image and its caption as found on disk, before per-step processing
    (shuffle, dropout, token expansion happen when a batch is made)."""

    path: Path
    caption: str
    caption_source: str  # "file" | "class_tokens" | "metadata" | "template" | "none" (empty)
    subset: SubsetSpec
    size: tuple[int, int] | None = None  # (width, height) once read
    mask_path: Path | None = None  # its loss mask in the subset's conditioning_data_dir
