"""What a dataset is, after reading any of its sources (sd-scripts dataset TOML, DreamBooth
folders, fine-tune metadata): plain data shared by discovery, checks, buckets and batching.

No torch here: the GUI's dataset doctor and `check-dataset` use these too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


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
class SubsetSpec:
    """One [[datasets.subsets]] entry (or one N_name folder), after general -> dataset ->
    subset inheritance. Field names and defaults are sd-scripts'."""

    image_dir: str = ""  # DreamBooth-style folder of images (+ caption files)
    metadata_file: str = ""  # fine-tune JSON {image_key: {"caption": ..., "tags": ...}}
    num_repeats: int = 1
    is_reg: bool = False  # regularization images: loss weighted by prior_loss_weight
    class_tokens: str = ""  # caption for images without a caption file
    caption_extension: str = ".caption"
    shuffle_caption: bool = False
    caption_separator: str = ","
    keep_tokens: int = 0
    keep_tokens_separator: str = ""
    caption_prefix: str = ""
    caption_suffix: str = ""
    flip_aug: bool = False
    color_aug: bool = False
    random_crop: bool = False
    caption_dropout_rate: float = 0.0
    caption_dropout_every_n_epochs: int = 0
    caption_tag_dropout_rate: float = 0.0
    where: str = ""  # for messages: "dataset.toml: datasets[0].subsets[1]" or "folder 10_cat"


@dataclass
class DatasetSpec:
    """One [[datasets]] entry: its subsets share resolution, batch size and buckets."""

    subsets: list[SubsetSpec] = field(default_factory=list)
    resolution: tuple[int, int] = (512, 512)  # (width, height)
    batch_size: int = 1
    enable_bucket: bool = False
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    bucket_no_upscale: bool = False
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
