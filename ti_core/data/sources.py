"""Read a dataset from its source into DatasetSpecs (sd-scripts dataset TOML, DreamBooth `N_name`
folders, fine-tune metadata JSON), and find its images and captions on disk as sd-scripts does.

Torch-free: the GUI's dataset doctor and `check-dataset` use it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ti_core.config.run_config import DatasetConfig
from ti_core.data.dataset_toml import (
    DATASET_KEYS,
    SUBSET_KEYS,
    load_dataset_config,
    run_values,
    subset_spec,
)
from ti_core.data.images import IMAGE_EXTENSIONS
from ti_core.data.info_cache import INFO_CACHE_FILE, use_info_cache
from ti_core.data.masks import attach_masks, mask_folder_for
from ti_core.data.spec import (
    DatasetSpec,
    ImageEntry,
    Problem,
    SubsetSpec,
    parse_face_crop_range,
    parse_resolution,
)
from ti_core.errors import DatasetError

OTHER_CAPTION_EXTENSIONS = (".txt", ".caption", ".tags")  # looked for when none are found


def parse_folder_name(name: str) -> tuple[int, str] | None:
    """sd-scripts' DreamBooth folder rule: "10_my cat" -> (10, "my cat"); no number -> None."""
    repeats, _, class_tokens = name.partition("_")
    try:
        return int(repeats), class_tokens
    except ValueError:
        return None


def run_datasets(data: DatasetConfig, demo_folder: Callable[[str], str]) -> list[DatasetSpec]:
    """The datasets a run trains on: the dataset TOML, else train_data_dir / in_json folders;
    run options fill what a dataset TOML leaves unset, as in sd-scripts. `demo_folder` turns
    demo:FAMILY into the demo dataset's folder (the engine builds it; the GUI, which never
    loads torch, asks a child process)."""
    if data.dataset_config:
        return load_dataset_config(data.dataset_config, defaults=run_values(data))
    if not data.train_data_dir and not data.in_json:
        raise DatasetError(
            "No images to train on: set dataset_config (an sd-scripts dataset TOML) or "
            "train_data_dir (a folder of N_name subfolders)."
        )
    return datasets_from_args(data, train_data_dir=demo_folder(data.train_data_dir))


def datasets_from_args(run: DatasetConfig | None = None, /, **options: Any) -> list[DatasetSpec]:
    """The one dataset sd-scripts builds without a dataset TOML: a subset per `N_name` folder
    of train_data_dir (and of reg_data_dir, is_reg=True), or with in_json one fine-tuning subset
    (metadata in_json, images in train_data_dir, dataset_repeats repeats). Folder problems
    (missing, no N_ prefix) go into DatasetSpec.problems; discover_images reports them.

    `run`: the run's [dataset] options; `options`: some of them by name instead, or on top
    (train_data_dir=..., caption_extension=".txt"); the rest keep their declared defaults."""
    run = dataclasses.replace(run or DatasetConfig(), **options)  # an unknown name: TypeError
    if not run.train_data_dir and not run.in_json:
        raise DatasetError("no dataset: set dataset_config, train_data_dir or in_json")
    values = run_values(run)
    values["resolution"] = parse_resolution(values["resolution"])
    parse_face_crop_range(run.face_crop_aug_range, "[dataset] face_crop_aug_range")
    dataset = DatasetSpec(**{key: values[key] for key in DATASET_KEYS})
    common = {key: values[key] for key in SUBSET_KEYS & set(values)}
    if run.in_json:
        dataset.where = f"in_json {run.in_json}"
        values = {**common, "image_dir": run.train_data_dir, "metadata_file": run.in_json,
                  "conditioning_data_dir": run.conditioning_data_dir}  # fmt: skip
        dataset.subsets = [subset_spec({**values, "num_repeats": run.dataset_repeats}, "in_json")]
        if run.reg_data_dir:
            dataset.problems.append(_problem("reg_ignored", run.reg_data_dir, "reg_data_dir"))
        return [dataset]
    dataset.where = f"train_data_dir {run.train_data_dir}"
    dataset.subsets = _folder_subsets(run.train_data_dir, False, common, dataset.problems)
    for subset in dataset.subsets if run.conditioning_data_dir else []:  # not reg_data_dir's
        subset.conditioning_data_dir = mask_folder_for(run.conditioning_data_dir, subset.image_dir)
    if run.reg_data_dir:
        dataset.subsets += _folder_subsets(run.reg_data_dir, True, common, dataset.problems)
    return [dataset]


# fmt: off
# What each problem found while reading a dataset means: (severity, message, hint).
PROBLEMS: dict[str, tuple[str, str, str]] = {
    "missing_folder": ("error", "{what} not found",
                       "check the path (a relative one is read from the folder the trainer "
                       "was started in, as sd-scripts does)"),
    "no_subfolders": ("error", "{option} has no N_name subfolders",
                      "put the images in a subfolder such as 10_mytoken toy (N = repeats)"),
    "no_repeats_prefix": ("warning", "folder ignored: its name does not start with a repeat "
                          "count of 1 or more and _",
                          "rename it N_name, e.g. 10_mytoken toy (10 repeats; images without "
                          "a caption file get the caption 'mytoken toy')"),
    "loose_images": ("warning", "images directly in {option} are not used",
                     "move them into a subfolder named N_name, e.g. 10_mytoken toy"),
    "reg_ignored": ("warning", "reg_data_dir is not used with in_json (fine-tuning metadata)",
                    ""),
    "no_repeats": ("warning", "subset ignored: num_repeats is below 1", ""),
    "duplicate_subset": ("warning", "subset ignored: the same folder or metadata file as an "
                         "earlier subset", ""),
    "empty_folder": ("warning", "subset ignored: {what}", ""),
    "no_images": ("error", "no training images found{extra}",
                  "check image_dir / train_data_dir and the problems above"),
    "empty_caption_file": ("error", "caption file is empty (sd-scripts stops on it)",
                           "write the caption in it, or delete it to use the class tokens"),
    "not_utf8": ("error", "caption file is not UTF-8", "save it with UTF-8 encoding"),
    "multiline_caption": ("warning", "caption file has several lines; only the first is used",
                          "put the whole caption on the first line, or set enable_wildcard "
                          "to train on one line of them, picked each step"),
    "caption_extension": ("warning", "no {ext} caption files, but {count} {other} files next "
                          "to the images", 'set caption_extension = "{other}" to use them'),
    "face_crop_with_buckets": ("warning", "face_crop_aug_range does nothing with enable_bucket: "
                               "sd-scripts crops around faces only without buckets",
                               "turn enable_bucket off, or remove face_crop_aug_range"),
    "no_face_position": ("warning", "face_crop_aug_range: {count} images have no face position in "
                         "their name and train without the face crop",
                         "name them NAME_cx_cy_w_h.png (the face's centre and size in pixels), "
                         "as sd-scripts' tools/detect_face_rotate.py does"),
    "cache_info_ignored": ("warning", "cache_info is for image folders: it does nothing for "
                           "a metadata file (which holds the captions already)", ""),
    "info_cache_unwritable": ("warning", "cannot write cache_info's " + INFO_CACHE_FILE,
                              "make the folder writable, or turn cache_info off"),
    "bad_metadata": ("error", "{what}",
                     'the file holds {{"image_key": {{"caption": "...", "tags": "..."}}}}; '
                     "image_key is a path, or a file name without extension in image_dir"),
}
# fmt: on


def _problem(code: str, path: Any = "", where: str = "", detail: str = "", **values) -> Problem:
    severity, message, hint = PROBLEMS[code]
    return Problem(
        severity, code, message.format(**values), str(path), detail, hint.format(**values), where
    )


def _folder_subsets(base_dir: str, is_reg: bool, common: dict, problems: list) -> list:
    option = "reg_data_dir" if is_reg else "train_data_dir"
    base = Path(base_dir)
    if not base.is_dir():
        problems.append(_problem("missing_folder", base_dir, option, what=f"{option} folder"))
        return []
    subsets, loose_images = [], []
    for child in sorted(base.iterdir()):
        if child.name.startswith("."):
            continue
        if not child.is_dir():
            loose_images += [child] if child.suffix.lower() in IMAGE_EXTENSIONS else []
            continue
        parsed = parse_folder_name(child.name)
        if parsed is None or parsed[0] < 1:
            problems.append(_problem("no_repeats_prefix", child, option))
            continue
        values = {**common, "image_dir": str(child), "is_reg": is_reg}
        values.update(num_repeats=parsed[0], class_tokens=parsed[1])
        subsets.append(subset_spec(values, f"{'reg folder' if is_reg else 'folder'} {child.name}"))
    if loose_images:
        detail = f"{len(loose_images)} images"
        problems.append(_problem("loose_images", base_dir, option, detail, option=option))
    if not subsets:
        problems.append(_problem("no_subfolders", base_dir, option, option=option))
    return subsets


def glob_images(folder: Path) -> list[Path]:
    """The images of one folder (not its subfolders), sorted by path, hidden files left out."""
    return sorted(
        child
        for child in folder.iterdir()
        if child.suffix.lower() in IMAGE_EXTENSIONS
        and not child.name.startswith(".")
        and child.is_file()
    )


def discover_images(dataset: DatasetSpec) -> tuple[list[ImageEntry], list[Problem]]:
    """Every image of every subset with its caption, and every problem found on the way.

    Subsets sd-scripts skips (num_repeats < 1, the same folder twice, no images) are skipped
    here too, with a warning. Image sizes are left for whoever opens the images."""
    entries: list[ImageEntry] = []
    problems = list(dataset.problems)
    seen: set[str] = set()
    for subset in dataset.subsets:
        source = subset.metadata_file or subset.image_dir
        if subset.num_repeats < 1 or source in seen:
            code = "no_repeats" if subset.num_repeats < 1 else "duplicate_subset"
            problems.append(_problem(code, source, subset.where))
            continue
        seen.add(source)
        read = _finetune_images if subset.metadata_file else _dreambooth_images
        found = read(subset, problems)
        problems += _face_crop_problems(dataset, subset, found)
        entries += found
    attach_masks(entries, problems)
    if not any(not entry.subset.is_reg for entry in entries):
        extra = " (only regularization images)" if entries else ""
        problems.append(_problem("no_images", "", dataset.where, extra=extra))
    return entries, problems


def _dreambooth_images(subset: SubsetSpec, problems: list[Problem]) -> list[ImageEntry]:
    folder = Path(subset.image_dir)
    if not subset.image_dir or not folder.is_dir():  # Path("") would be the current folder
        problems.append(_problem("missing_folder", folder, subset.where, what="image folder"))
        return []
    paths = glob_images(folder)
    if not paths:
        what = "no images (png, jpg, jpeg, webp, bmp) in the folder"
        problems.append(_problem("empty_folder", folder, subset.where, what=what))
        return []
    entries = []
    for path in paths:
        caption = read_caption(path, subset, problems)
        if caption is not None:
            entries.append(ImageEntry(path, caption, "file", subset))
        else:  # sd-scripts: the class tokens (folder name or class_tokens) are the caption
            source = "class_tokens" if subset.class_tokens else "none"
            entries.append(ImageEntry(path, subset.class_tokens, source, subset))
    if all(entry.caption_source != "file" for entry in entries):
        _note_other_caption_files(paths, subset, problems)
    if subset.cache_info:
        cache = folder / INFO_CACHE_FILE
        unwritable = use_info_cache(cache, entries)
        if unwritable:
            problems.append(_problem("info_cache_unwritable", cache, subset.where, unwritable))
    return entries


def face_box(image: str | Path) -> tuple[int, int, int, int] | None:
    """The face position sd-scripts reads from a file name, NAME_cx_cy_w_h.png: the face's
    centre and size in pixels (its tools/detect_face_rotate.py names crops so); None without."""
    parts = Path(image).stem.split("_")
    try:
        centre_x, centre_y, width, height = (int(part) for part in parts[-4:])
    except ValueError:
        return None
    found = len(parts) >= 5 and centre_x > 0 and max(width, height) > 0
    return (centre_x, centre_y, width, height) if found else None


def _face_crop_problems(
    dataset: DatasetSpec, subset: SubsetSpec, entries: list[ImageEntry]
) -> list[Problem]:
    """face_crop_aug_range that cannot act: with buckets, or on images named without a face."""
    if not subset.face_crop_aug_range or not entries:
        return []
    if dataset.enable_bucket:
        return [_problem("face_crop_with_buckets", "", subset.where)]
    count = sum(1 for entry in entries if face_box(entry.path) is None)
    return [_problem("no_face_position", "", subset.where, count=count)] if count else []


def _caption_candidates(image: Path, extension: str) -> list[Path]:
    # sd-scripts also tries the name without a face-crop suffix: img_cx_cy_w_h.png -> img.txt
    candidates = [image.with_name(image.stem + extension)]
    parts = image.stem.split("_")
    if len(parts) >= 5:
        candidates.append(image.with_name("_".join(parts[:-4]) + extension))
    return candidates


def read_caption(image: Path, subset: SubsetSpec, problems: list[Problem]) -> str | None:
    """The caption file's first line, stripped (sd-scripts reads no other); with
    enable_wildcard every line that is not empty, each stripped, joined by newlines (a step
    picks one). None without a file."""
    for caption_path in _caption_candidates(image, subset.caption_extension):
        if not caption_path.is_file():
            continue
        data = caption_path.read_bytes()
        if not data:
            problems.append(_problem("empty_caption_file", caption_path, subset.where))
            return ""
        try:
            text = data.decode("utf-8-sig")  # a BOM would otherwise end up in the prompt
        except UnicodeDecodeError as error:
            detail = f"byte 0x{data[error.start]:02x} at position {error.start}"
            problems.append(_problem("not_utf8", caption_path, subset.where, detail))
            text = data.decode("utf-8", errors="replace")
        lines = text.splitlines()
        if subset.enable_wildcard:
            return "\n".join(line.strip() for line in lines if line.strip())
        if sum(1 for line in lines if line.strip()) > 1:
            problems.append(_problem("multiline_caption", caption_path, subset.where))
        return lines[0].strip() if lines else ""
    return None


def _note_other_caption_files(images: list[Path], subset: SubsetSpec, problems: list) -> None:
    """The classic slip: .txt captions while caption_extension is still sd-scripts' .caption."""
    for other in OTHER_CAPTION_EXTENSIONS:
        count = sum(1 for image in images if image.with_suffix(other).is_file())
        if other != subset.caption_extension and count:
            ext = subset.caption_extension
            problem = _problem("caption_extension", subset.image_dir, subset.where, ext=ext,
                               count=count, other=other)  # fmt: skip
            problems.append(problem)
            return


def _finetune_images(subset: SubsetSpec, problems: list[Problem]) -> list[ImageEntry]:
    path, where = Path(subset.metadata_file), subset.where
    if not path.is_file():
        problems.append(_problem("missing_folder", path, where, what="metadata file"))
        return []
    if subset.cache_info:
        problems.append(_problem("cache_info_ignored", path, where))
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        what = "metadata file is not UTF-8 JSON"
        problems.append(_problem("bad_metadata", path, where, str(error), what=what))
        return []
    if not isinstance(metadata, dict) or not metadata:
        code, what = ("empty_folder", "no entries") if metadata == {} else ("bad_metadata", "")
        what = what or "metadata is not a JSON object"
        problems.append(_problem(code, path, where, what=what))
        return []
    entries = []
    for image_key, info in metadata.items():
        image = _find_metadata_image(image_key, subset.image_dir)
        info = info if isinstance(info, dict) else {"caption": info}
        caption, tags = info.get("caption"), info.get("tags")
        if image is None or not all(isinstance(v, (str, type(None))) for v in (caption, tags)):
            what = "no image for a metadata entry" if image is None else "bad metadata entry"
            problems.append(_problem("bad_metadata", path, where, image_key, what=what))
            continue
        if caption is None:  # sd-scripts: tags alone are the caption
            caption, tags = tags, None
        separator = subset.caption_separator
        if subset.enable_wildcard and caption is not None and tags:
            # every line of the caption (a step picks one) gets the tags, kept on one line
            tags = tags.replace("\n", separator)
            lines = [line for line in caption.split("\n") if line.strip()]
            caption = "\n".join(f"{line}{separator}{tags}" for line in lines)
        elif caption is not None and tags:
            caption = caption + separator + tags
        entries.append(ImageEntry(image, caption or "", "metadata", subset))
    return entries


def _find_metadata_image(image_key: str, image_dir: str) -> Path | None:
    """sd-scripts' lookup: the key as a path (from the current folder), else image_dir/key.ext."""
    if Path(image_key).is_file():
        return Path(image_key)
    if not image_dir:
        return None
    extensions = (*IMAGE_EXTENSIONS, *(ext.upper() for ext in IMAGE_EXTENSIONS))
    found = [Path(image_dir) / (image_key + ext) for ext in extensions]
    found = sorted(path for path in found if path.is_file())
    return found[0] if found else None
