"""The dataset doctor: what a run would train on (images, repeats, steps per epoch, buckets) and
everything that would make it fail or learn nothing, before any model is loaded.

`python -m ti_core check-dataset` prints `DatasetReport.to_text()`; the GUI shows it too.
Torch-free (stdlib + PIL).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ti_core.data.captions import caption_has_token
from ti_core.data.sources import discover_images
from ti_core.data.spec import DatasetSpec, ImageEntry, Problem

# (image width, height), dataset -> the bucket (width, height) sd-scripts would put it in
BucketOf = Callable[[tuple[int, int], DatasetSpec], tuple[int, int]]
CAPTION_SOURCES = {"file": "from files", "class_tokens": "from class tokens",
                   "metadata": "from metadata", "none": "empty"}  # fmt: skip


@dataclass
class SubsetReport:
    where: str
    source: str  # image_dir, or metadata_file for fine-tuning subsets
    is_reg: bool
    images: int
    num_repeats: int
    images_per_epoch: int  # images x repeats; for reg subsets after sd-scripts' balancing
    steps_share: float  # images_per_epoch / batch_size: this subset's part of an epoch
    captions: dict[str, int] = field(default_factory=dict)  # caption source -> images
    missing_token: int = 0  # training captions that do not contain the token


@dataclass
class DatasetSummary:
    where: str
    resolution: tuple[int, int]
    batch_size: int
    enable_bucket: bool
    subsets: list[SubsetReport]
    train_images_per_epoch: int
    reg_images_per_epoch: int
    steps_per_epoch: int  # batches per epoch, as sd-scripts counts them (per bucket, rounded up)
    steps_exact: bool  # False when buckets could not be worked out (no bucket_of, unread images)
    buckets: dict[str, int]  # "WIDTHxHEIGHT" -> images per epoch (repeats included)


@dataclass
class DatasetReport:
    token_strings: list[str]  # the run's embeddings' token strings (one today)
    use_templates: bool
    datasets: list[DatasetSummary]
    errors: list[Problem]  # any of these stops training
    warnings: list[Problem]
    # What was found per dataset, sizes read: training reuses it instead of reading again.
    entries: list[list[ImageEntry]] = field(default_factory=list, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def steps_per_epoch(self) -> int:
        return sum(dataset.steps_per_epoch for dataset in self.datasets)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(dataclasses.replace(self, entries=[]))
        del data["entries"]  # image lists are for the trainer, not the report
        return {**data, "ok": self.ok, "steps_per_epoch": self.steps_per_epoch}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    def to_text(self) -> str:
        lines = [
            f"Dataset check for the token {quoted(self.token_strings)}"
            + (" (training on templates; captions are not used)" if self.use_templates else "")
        ]
        for index, dataset in enumerate(self.datasets):
            lines += ["", *_dataset_lines(index, dataset)]
        if len(self.datasets) > 1:
            lines += ["", f"steps per epoch, all datasets: {self.steps_per_epoch}"]
        for title, problems in (("Errors", self.errors), ("Warnings", self.warnings)):
            if problems:
                lines += ["", f"{title} ({len(problems)}):", *_problem_lines(problems)]
        verdict = "ready to train" if self.ok else "fix the errors before training"
        count = f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)"
        return "\n".join([*lines, "", f"Result: {count}: {verdict}."])


def check_datasets(
    datasets: Sequence[DatasetSpec],
    token_strings: str | Sequence[str],
    use_templates: bool = False,
    *,
    bucket_of: BucketOf | None = None,
    reso_steps_multiple: int = 64,
    read_images: bool = True,
    add_missing_token: bool = False,
) -> DatasetReport:
    """Find every image and caption, open every image, and report counts and problems.

    `bucket_of(size, dataset)` gives an image's bucket when enable_bucket is on (without it the
    bucket histogram is left out and steps per epoch are a lower bound). sd-scripts' TI script
    wants bucket_reso_steps to be a multiple of `reso_steps_multiple` (64; SDXL's is 32).
    Image sizes found are written into the entries' `size`. `token_strings`: the run's
    embeddings' (a caption needs one of them). Captions without a token are errors unless
    `add_missing_token` (then the run puts the token in front of them)."""
    tokens = [token_strings] if isinstance(token_strings, str) else list(token_strings)
    tokens = [token for token in tokens if token]
    problems: list[Problem] = []
    summaries = []
    found_entries: list[list[ImageEntry]] = []
    digests: dict[str, list[Path]] = {}
    for dataset in datasets:
        entries, found = discover_images(dataset)
        found_entries.append(entries)
        problems += found + _setting_problems(dataset, reso_steps_multiple)
        buckets: dict[int, tuple[int, int]] = {}  # id(entry) -> its bucket, where known
        for entry in entries if read_images else []:
            problems += _read_image(entry, digests)
            if entry.size is not None:
                problems += _size_problems(entry, dataset, bucket_of, buckets)
        if not use_templates:
            problems += _token_problems(entries, tokens, add_missing_token)
        summaries.append(_summarize(dataset, entries, buckets, tokens, use_templates))
    for paths in digests.values():
        if len(paths) > 1:
            others = ", ".join(str(path) for path in paths[1:])
            problems.append(Problem(
                "warning", "duplicate_image", "the same image more than once (identical files)",
                str(paths[0]), detail=f"same bytes as {others}",
                hint="delete the copies: each copy trains the image again",
            ))  # fmt: skip
    return DatasetReport(
        tokens,
        use_templates,
        summaries,
        errors=[problem for problem in problems if problem.severity == "error"],
        warnings=[problem for problem in problems if problem.severity != "error"],
        entries=found_entries,
    )


def _setting_problems(dataset: DatasetSpec, reso_steps_multiple: int) -> list[Problem]:
    """The dataset settings sd-scripts refuses to start with."""
    if not dataset.enable_bucket:
        return []
    width, height = dataset.resolution
    refusals = []
    if min(width, height) < dataset.min_bucket_reso:
        refusals.append(f"min_bucket_reso {dataset.min_bucket_reso} is above the resolution's "
                        f"smaller side {min(width, height)}")  # fmt: skip
    if max(width, height) > dataset.max_bucket_reso:
        refusals.append(f"max_bucket_reso {dataset.max_bucket_reso} is below the resolution's "
                        f"larger side {max(width, height)}")  # fmt: skip
    if dataset.bucket_reso_steps % reso_steps_multiple:
        refusals.append(f"bucket_reso_steps {dataset.bucket_reso_steps} is not a multiple of "
                        f"{reso_steps_multiple}")  # fmt: skip
    hint = "change the bucket settings or the resolution"
    return [Problem("error", "bucket_settings", refusal, hint=hint, where=dataset.where)
            for refusal in refusals]  # fmt: skip


def _read_image(entry: ImageEntry, digests: dict[str, list[Path]]) -> list[Problem]:
    """Open and decode the image (sd-scripts would crash on it mid-run); note its size and hash."""
    try:
        data = entry.path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            image.verify()  # checks the file's structure; the image cannot be used after this
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decodes every pixel: catches truncated files that verify() passes
            width, height = image.size
            # EXIF orientations 5-8 turn the picture a quarter: it trains upright, sides swapped
            quarter_turn = image.getexif().get(0x0112) in (5, 6, 7, 8)
            entry.size = (height, width) if quarter_turn else (width, height)
    except Exception as error:  # PIL raises many kinds for a broken file; all mean "unreadable"
        unknown = isinstance(error, UnidentifiedImageError)
        detail = "not an image format Pillow knows" if unknown else str(error)
        return [Problem("error", "unreadable_image", "image cannot be read", str(entry.path),
                        detail=detail or type(error).__name__,
                        hint="re-save or delete it", where=entry.subset.where)]  # fmt: skip
    digests.setdefault(hashlib.sha256(data).hexdigest(), []).append(entry.path)
    return []


def _size_problems(
    entry: ImageEntry, dataset: DatasetSpec, bucket_of: BucketOf | None, buckets: dict
) -> list[Problem]:
    """Find the image's bucket (into `buckets`) and whether the image is too small for it."""
    width, height = entry.size
    where = entry.subset.where
    steps = dataset.bucket_reso_steps
    no_upscale = dataset.enable_bucket and dataset.bucket_no_upscale
    if no_upscale and (width < steps or height < steps):
        return [Problem("error", "too_small", "image smaller than bucket_reso_steps: its "
                        "bucket would be empty", str(entry.path), detail=f"{width}x{height}",
                        hint="remove it or use a larger image", where=where)]  # fmt: skip
    bucket = dataset.resolution if not dataset.enable_bucket else None
    if dataset.enable_bucket and bucket_of is not None:
        bucket = buckets[id(entry)] = bucket_of(entry.size, dataset)
    if no_upscale:
        return []  # images are only ever shrunk
    if bucket is None:  # bucket unknown: all buckets have about the resolution's area
        small = width * height < dataset.resolution[0] * dataset.resolution[1]
    else:
        small = width < bucket[0] or height < bucket[1]
    if not small:
        return []
    target = f"{bucket[0]}x{bucket[1]}" if bucket else "the training resolution"
    return [Problem("warning", "too_small", "image smaller than its training size: it will be "
                    "upscaled (blurry)", str(entry.path), detail=f"{width}x{height} < {target}",
                    hint="use larger images or a lower resolution", where=where)]  # fmt: skip


def quoted(tokens: Sequence[str]) -> str:
    """'"tok"', or '"a" or "b"' for a run with several embeddings."""
    return " or ".join(f'"{token}"' for token in tokens)


def lacks_tokens(entry: ImageEntry, tokens: Sequence[str]) -> bool:
    caption = _full_caption(entry)
    return not any(caption_has_token(caption, token) for token in tokens)


def _token_problems(
    entries: list[ImageEntry], tokens: list[str], add_missing_token: bool
) -> list[Problem]:
    """Captions without a token train nothing in TI; reg captions with one teach the class."""
    if not tokens:
        return []
    severity = "warning" if add_missing_token else "error"
    problems: list[Problem] = []
    train = [entry for entry in entries if not entry.subset.is_reg]
    missing = [entry for entry in train if lacks_tokens(entry, tokens)]
    shown, first = quoted(tokens), tokens[0]
    hint = (f"add {shown} to these captions (or name the folder N_{first} class "
            "for images without caption files), train on templates, or set add_missing_token = "
            "true to put the token in front of them")  # fmt: skip
    if add_missing_token:
        hint = f'the token is put in front of these captions: "{first}, <caption>"'

    if train and len(missing) == len(train):
        example = _full_caption(missing[0])
        problems.append(Problem(
            severity, "no_token", f"no caption contains the token {shown}: training "
            "would learn nothing", str(missing[0].path.parent), hint=hint,
            detail=f'{len(missing)} captions, e.g. "{example}"',
        ))  # fmt: skip
    else:
        problems += [Problem(severity, "missing_token", f"caption does not contain the token "
                             f"{shown}", str(entry.path), detail=f'"{entry.caption}"',
                             hint=hint, where=entry.subset.where)
                     for entry in missing]  # fmt: skip
    reg_with_token = [
        e for e in entries if e.subset.is_reg and any(token in e.caption for token in tokens)
    ]
    problems += [Problem("warning", "token_in_reg", "regularization caption contains the token",
                         str(entry.path), detail=f'"{entry.caption}"', where=entry.subset.where,
                         hint="reg captions should name only the class (e.g. 'toy')")
                 for entry in reg_with_token]  # fmt: skip
    return problems


def _full_caption(entry: ImageEntry) -> str:
    prefix, suffix = entry.subset.caption_prefix, entry.subset.caption_suffix
    return " ".join(part for part in (prefix, entry.caption, suffix) if part)


def _reg_repeats(reg_entries: list[ImageEntry], num_train_images: int) -> list[int]:
    """sd-scripts' balancing: reg images are used, in order, until they match the training
    images of an epoch (repeats included); later ones may go unused, earlier ones repeat more."""
    repeats = [0] * len(reg_entries)
    used, first_pass = 0, True
    while reg_entries and used < num_train_images:
        for index, entry in enumerate(reg_entries):
            added = entry.subset.num_repeats if first_pass else 1
            repeats[index] += added
            used += added
            if used >= num_train_images:
                break
        first_pass = False
    return repeats


def _summarize(
    dataset: DatasetSpec,
    entries: list[ImageEntry],
    buckets_of_entries: dict[int, tuple[int, int]],
    tokens: list[str],
    use_templates: bool,
) -> DatasetSummary:
    train = [entry for entry in entries if not entry.subset.is_reg]
    reg = [entry for entry in entries if entry.subset.is_reg]
    repeats = [entry.subset.num_repeats for entry in train]
    repeats += _reg_repeats(reg, sum(repeats))
    per_epoch = Counter()
    buckets: Counter[str] = Counter()
    unknown = 0
    for entry, count in zip(train + reg, repeats, strict=True):
        per_epoch[id(entry.subset)] += count
        bucket = buckets_of_entries.get(id(entry))
        if not dataset.enable_bucket:
            bucket = dataset.resolution
        elif bucket is None:
            unknown += count
            continue
        buckets[f"{bucket[0]}x{bucket[1]}"] += count
    batch = dataset.batch_size
    steps = sum(math.ceil(count / batch) for count in buckets.values()) + math.ceil(unknown / batch)

    subsets = []
    for subset in dataset.subsets:
        mine = [entry for entry in entries if entry.subset is subset]
        if not mine:
            continue
        captions = Counter("template" if use_templates else entry.caption_source for entry in mine)
        missing = 0
        if tokens and not use_templates and not subset.is_reg:
            missing = sum(1 for entry in mine if lacks_tokens(entry, tokens))
        subsets.append(SubsetReport(
            subset.where, subset.metadata_file or subset.image_dir, subset.is_reg, len(mine),
            subset.num_repeats, per_epoch[id(subset)], per_epoch[id(subset)] / batch,
            dict(captions), missing,
        ))  # fmt: skip
    return DatasetSummary(
        dataset.where, dataset.resolution, batch, dataset.enable_bucket, subsets,
        sum(repeats[: len(train)]), sum(repeats[len(train):]), steps, unknown == 0,
        dict(sorted(buckets.items())),
    )  # fmt: skip


def _dataset_lines(index: int, dataset: DatasetSummary) -> list[str]:
    width, height = dataset.resolution
    buckets = "buckets on" if dataset.enable_bucket else "buckets off"
    lines = [
        f"Dataset {index + 1}: {dataset.where}",
        f"  resolution {width}x{height}, batch size {dataset.batch_size}, {buckets}",
        f"  {'subset':<40} {'images':>6} {'repeats':>7} {'per epoch':>9}  captions",
    ]
    for subset in dataset.subsets:
        name = subset.where + (" (reg)" if subset.is_reg else "")
        labels = {**CAPTION_SOURCES, "template": "templates"}
        captions = ", ".join(f"{n} {labels.get(k, k)}" for k, n in subset.captions.items())
        if subset.missing_token:
            captions += f"; {subset.missing_token} without the token"
        lines.append(f"  {name:<40} {subset.images:>6} {subset.num_repeats:>7} "
                     f"{subset.images_per_epoch:>9}  {captions}")  # fmt: skip
    if not dataset.subsets:
        lines.append("  (no images)")
    approx = "" if dataset.steps_exact else " (at least: buckets not worked out)"
    lines.append(f"  images per epoch: {dataset.train_images_per_epoch} training, "
                 f"{dataset.reg_images_per_epoch} regularization")  # fmt: skip
    lines.append(f"  steps per epoch: {dataset.steps_per_epoch}{approx}")
    if dataset.buckets:
        lines.append("  buckets: " + ", ".join(f"{k} x{n}" for k, n in dataset.buckets.items()))
    return lines


def _problem_lines(problems: list[Problem], shown: int = 5) -> list[str]:
    """Problems of one kind together: the message and hint once, then the files."""
    groups: dict[tuple[str, str, str], list[Problem]] = {}
    for problem in problems:
        groups.setdefault((problem.code, problem.message, problem.hint), []).append(problem)
    lines = []
    for (_, message, hint), group in groups.items():
        count = f" ({len(group)} files)" if len(group) > 1 else ""
        lines.append(f"  - {message}{count}")
        for problem in group[:shown]:
            place = problem.path or problem.where
            detail = f"  [{problem.detail}]" if problem.detail else ""
            if place or detail:
                lines.append(f"      {place}{detail}")
        if len(group) > shown:
            lines.append(f"      ... and {len(group) - shown} more")
        if hint:
            lines.append(f"    -> {hint}")
    return lines
