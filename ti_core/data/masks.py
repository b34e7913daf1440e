"""Loss masks as sd-scripts makes them: an image's alpha channel (alpha_mask) or a mask image of
the same name in the subset's conditioning_data_dir (masked_loss), 0 to 255 = loss weight 0 to 1.

Here: where each image's mask is, the checks before a run, and the mask read at the image's own
size. Cutting it into the bucket and flipping it with the image is data/pixels.py's job; the
loss is weighted in training/losses.py. Torch-free: the dataset doctor finds missing masks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ti_core.config.run_config import Config
from ti_core.data.images import IMAGE_EXTENSIONS, image_size
from ti_core.data.spec import DatasetSpec, ImageEntry, Problem, SubsetSpec
from ti_core.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

ALPHA, FILE = "alpha", "file"  # where a mask comes from
ASPECT_TOLERANCE = 0.01  # a mask made at another size is scaled to the image when the shape agrees
_FOLDER_HINT = (
    "put a mask image with the same file name stem there (white = learned, black = ignored), "
    "or remove conditioning_data_dir"
)


def mask_source(subset: SubsetSpec) -> str | None:
    """FILE, ALPHA or None. A subset with both takes its mask files, as sd-scripts prefers the
    conditioning images over alpha."""
    if subset.conditioning_data_dir:
        return FILE
    return ALPHA if subset.alpha_mask else None


def mask_folder_for(conditioning_data_dir: str, image_dir: str) -> str:
    """The mask folder of one train_data_dir subfolder: a subfolder of the same name
    (conditioning_data_dir/10_cat) when there is one, else conditioning_data_dir itself."""
    mirrored = Path(conditioning_data_dir) / Path(image_dir).name
    return str(mirrored) if image_dir and mirrored.is_dir() else conditioning_data_dir


def attach_masks(entries: Iterable[ImageEntry], problems: list[Problem]) -> None:
    """Set each image's mask_path from its subset's conditioning_data_dir; a missing folder, a
    missing mask or a mask of another shape is an error that names the image and the folder."""
    masks_by_folder: dict[str, dict[str, Path] | None] = {}
    for entry in entries:
        folder = entry.subset.conditioning_data_dir
        if not folder:
            continue
        if folder not in masks_by_folder:
            masks_by_folder[folder] = _masks_in(Path(folder))
            if masks_by_folder[folder] is None:
                problems.append(Problem(
                    "error", "missing_folder", "mask folder (conditioning_data_dir) not found",
                    folder, hint="check the path", where=entry.subset.where,
                ))  # fmt: skip
        masks = masks_by_folder[folder]
        if masks is None:
            continue
        mask = masks.get(entry.path.stem)
        if mask is None:
            problems.append(Problem(
                "error", "missing_mask", "no loss mask for this image in conditioning_data_dir",
                str(entry.path), detail=f"expected {Path(folder) / entry.path.stem}.png "
                "(or another image type)", hint=_FOLDER_HINT, where=entry.subset.where,
            ))  # fmt: skip
            continue
        problem = _shape_problem(entry, mask)
        if problem:
            problems.append(problem)
        else:
            entry.mask_path = mask


def _masks_in(folder: Path) -> dict[str, Path] | None:
    """The folder's images by file name stem (the first by name where several share one)."""
    if not folder.is_dir():
        return None
    masks: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            masks.setdefault(path.stem, path)
    return masks


def _shape_problem(entry: ImageEntry, mask: Path) -> Problem | None:
    try:
        width, height = entry.size or image_size(entry.path)
        mask_width, mask_height = image_size(mask)
    except DatasetError as error:
        return Problem("error", "unreadable_mask", "cannot read the image or its loss mask",
                       str(mask), detail=str(error), where=entry.subset.where)  # fmt: skip
    if abs(width * mask_height - mask_width * height) <= ASPECT_TOLERANCE * width * mask_height:
        return None
    return Problem(
        "error", "mask_shape", "the loss mask's shape differs from its image's", str(mask),
        detail=f"mask {mask_width}x{mask_height}, image {entry.path.name} {width}x{height}",
        hint="make the mask the same size as the image", where=entry.subset.where,
    )  # fmt: skip


def read_mask(entry: ImageEntry, size: tuple[int, int]) -> Image.Image | None:
    """The image's loss mask as an 8-bit grey image of `size`, the upright image's (width,
    height); None when its subset has none. Without an alpha channel, alpha_mask weighs 1."""
    source = mask_source(entry.subset)
    if source is None:
        return None
    if source == ALPHA:
        alpha = _read(entry.path, alpha=True)
        return alpha if alpha is not None else Image.new("L", size, 255)
    if entry.mask_path is None:  # attach_masks found none; the doctor stops such runs
        raise DatasetError(
            f"{entry.path}: no loss mask in {entry.subset.conditioning_data_dir} "
            f"({entry.subset.where}); {_FOLDER_HINT}."
        )
    mask = _read(entry.mask_path, alpha=False)
    if mask.size != size:
        shrinking = mask.size[0] > size[0] and mask.size[1] > size[1]
        mask = mask.resize(size, Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR)
    return mask


def _read(path: Path, alpha: bool) -> Image.Image | None:
    """The upright file's alpha channel (None without one), or its red channel (sd-scripts
    reads a mask as RGB and takes red: grey masks give their grey, alpha is dropped)."""
    try:
        with Image.open(path) as image:
            image.load()
            upright = ImageOps.exif_transpose(image)
            if alpha:
                has_alpha = upright.mode in ("RGBA", "LA", "PA", "RGBa", "La")
                if not has_alpha and "transparency" not in upright.info:
                    return None
                return upright.convert("RGBA").getchannel("A")
            if upright.mode.startswith("I"):  # 16-bit grey: PIL's convert would clip it
                values = np.asarray(upright, dtype=np.float64)
                peak = 65535.0 if values.max(initial=0) > 255 else 255.0
                return Image.fromarray(np.rint(values * 255.0 / peak).astype(np.uint8))
            return upright.convert("RGB").getchannel("R")
    except Exception as error:  # PIL raises OSError, ValueError, ... by format
        raise DatasetError(
            f"{path}: cannot read this {'image' if alpha else 'loss mask'} ({error}). "
            "Open it in an image viewer, then re-save or replace it."
        ) from None


def mask_cache_key(entry: ImageEntry) -> str | None:
    """What a cached mask was made from, so a disk cache without it, or with another, is
    encoded again: the source, and for a mask file its path, size and time."""
    source = mask_source(entry.subset)
    if source is None:
        return None
    key: dict = {"source": source}
    if source == FILE and entry.mask_path is not None:
        stat = entry.mask_path.stat()
        key.update(file=str(entry.mask_path), bytes=stat.st_size, mtime_ns=stat.st_mtime_ns)
    return json.dumps(key, sort_keys=True)


def check_mask_options(config: Config) -> None:
    """The run options alone: a run's conditioning_data_dir is for train_data_dir / in_json."""
    data = config.dataset
    if data.conditioning_data_dir and data.dataset_config:
        raise ConfigError(
            f"conditioning_data_dir = {data.conditioning_data_dir}: with dataset_config, set "
            "conditioning_data_dir in each [[datasets.subsets]] of the dataset TOML instead."
        )


def check_mask_settings(config: Config, specs: Sequence[DatasetSpec]) -> None:
    """Masks the run would not use are refused; masked_loss without masks is said once."""
    subsets = [subset for spec in specs for subset in spec.subsets]
    with_files = [subset for subset in subsets if subset.conditioning_data_dir]
    if with_files and not config.training.masked_loss:
        where = ", ".join(sorted({subset.where or subset.image_dir for subset in with_files}))
        raise ConfigError(
            f"conditioning_data_dir is set ({where}) but masked_loss is off: turn masked_loss "
            "on to weigh the loss by those masks, or remove conditioning_data_dir."
        )
    both = [subset for subset in with_files if subset.alpha_mask]
    if both:
        where = ", ".join(sorted({subset.where or subset.image_dir for subset in both}))
        log.warning(
            "%s: both alpha_mask and conditioning_data_dir are set; the mask files are used "
            "and the alpha channel is not (as sd-scripts does).", where
        )  # fmt: skip
    if config.training.masked_loss and not any(mask_source(subset) for subset in subsets):
        log.warning(
            "masked_loss is on but no subset has conditioning_data_dir or alpha_mask: the "
            "loss is not masked. Set conditioning_data_dir (a folder of mask images)."
        )
