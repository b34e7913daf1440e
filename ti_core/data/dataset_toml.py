"""sd-scripts' dataset TOML ([general], [[datasets]], [[datasets.subsets]]) read strictly into
DatasetSpecs, with general -> dataset -> subset inheritance. Torch-free.
"""

from __future__ import annotations

import difflib
import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ti_core.data.spec import DatasetSpec, SubsetSpec
from ti_core.errors import DatasetError

# fmt: off
# Every key a dataset TOML may set, with its type ("resolution" is an int or [width, height]).
KEY_TYPES: dict[str, Any] = {
    "image_dir": str, "metadata_file": str, "is_reg": bool,
    "num_repeats": int, "class_tokens": str, "caption_extension": str,
    "shuffle_caption": bool, "caption_separator": str, "keep_tokens": int,
    "keep_tokens_separator": str, "caption_prefix": str, "caption_suffix": str,
    "flip_aug": bool, "color_aug": bool, "random_crop": bool,
    "caption_dropout_rate": float, "caption_dropout_every_n_epochs": int,
    "caption_tag_dropout_rate": float,
    "resolution": "resolution", "batch_size": int, "enable_bucket": bool,
    "min_bucket_reso": int, "max_bucket_reso": int, "bucket_reso_steps": int,
    "bucket_no_upscale": bool,
}
SUBSET_ONLY_KEYS = {"image_dir", "metadata_file", "is_reg"}  # sd-scripts' "distinct" keys
DATASET_KEYS = {"resolution", "batch_size", "enable_bucket", "min_bucket_reso",
                "max_bucket_reso", "bucket_reso_steps", "bucket_no_upscale"}
DREAMBOOTH_ONLY_KEYS = {"caption_extension", "class_tokens", "is_reg"}
# sd-scripts keys we do not implement, with the value that means "off" (None: none does).
UNSUPPORTED_KEYS: dict[str, Any] = {
    "face_crop_aug_range": None, "token_warmup_min": 1, "token_warmup_step": 0,
    "secondary_separator": None, "enable_wildcard": False, "alpha_mask": False,
    "cache_info": False, "network_multiplier": 1.0, "conditioning_data_dir": None,
    "custom_attributes": None, "resize_interpolation": None, "validation_split": 0.0,
    "validation_seed": None,
}
LOWEST = {"batch_size": 1, "min_bucket_reso": 1, "max_bucket_reso": 1, "bucket_reso_steps": 1,
          "keep_tokens": 0, "caption_dropout_every_n_epochs": 0}
# fmt: on
ARGUMENT_NAMES = {"train_batch_size": "batch_size", "dataset_repeats": "num_repeats"}
SUBSET_FIELDS = set(KEY_TYPES) - DATASET_KEYS


def parse_resolution(value: Any) -> tuple[int, int]:
    """512, "512", "512,768", [512, 768] -> (width, height), as sd-scripts reads --resolution."""
    if isinstance(value, str):
        try:
            value = [int(part) for part in value.split(",")]
        except ValueError:
            raise DatasetError(f"resolution {value!r}: expected 'SIZE' or 'WIDTH,HEIGHT'") from None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = [value[0], value[0]]
    ok = isinstance(value, (list, tuple)) and len(value) == 2
    if not ok or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise DatasetError(f"resolution {value!r}: expected a size or [width, height] above 0")
    return (value[0], value[1])


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _check_value(key: str, value: Any, where: str) -> tuple[Any, str | None]:
    """The value converted to its field's type, or an error sentence."""
    kind = KEY_TYPES[key]
    bad = f"{where}: {key} = {_show(value)}"
    if kind == "resolution":
        try:
            if isinstance(value, str):  # a file says 512 or [512, 768]; "512" is the CLI's form
                raise DatasetError(value)
            return parse_resolution(value), None
        except DatasetError:
            return None, f"{bad}: expected a size (512) or [width, height] above 0"
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is float and not is_number or kind is int and not (is_number and type(value) is int):
        return None, f"{bad}: expected {'a number' if kind is float else 'a whole number'}"
    if kind in (bool, str) and not isinstance(value, kind):
        return None, f"{bad}: expected {'true or false' if kind is bool else 'a string'}"
    if key.endswith("_rate") and not 0 <= value <= 1:
        return None, f"{bad}: expected a rate from 0 to 1"
    lowest = LOWEST.get(key)
    if lowest is not None and value < lowest:
        return None, f"{bad}: expected {lowest} or more"
    return (float(value) if kind is float else value), None


def _check_table(table: Mapping[str, Any], level: str, where: str, errors: list[str]) -> dict:
    """Keep the keys allowed at `level` (general | dataset | subset), noting every bad one."""
    checked = {}
    for key, value in table.items():
        if level == "dataset" and key == "subsets":
            continue
        bad = f"{where}: {key} = {_show(value)}"
        if key in UNSUPPORTED_KEYS:
            if UNSUPPORTED_KEYS[key] is not None and value == UNSUPPORTED_KEYS[key]:
                continue  # the value that means "off": nothing is being ignored
            errors.append(f"{bad}: sd-scripts' {key} is not supported by this trainer; remove it")
        elif key in KEY_TYPES and key in SUBSET_ONLY_KEYS and level != "subset":
            errors.append(f"{bad}: {key} belongs in a [[datasets.subsets]] table")
        elif key in KEY_TYPES and key in DATASET_KEYS and level == "subset":
            errors.append(f"{bad}: {key} is a dataset setting; set it in [[datasets]] or [general]")
        elif key in KEY_TYPES:
            converted, error = _check_value(key, value, where)
            if error:
                errors.append(error)
            else:
                checked[key] = converted
        elif key in ARGUMENT_NAMES:
            errors.append(f"{bad}: unknown key; in a dataset TOML it is {ARGUMENT_NAMES[key]}")
        else:
            close = difflib.get_close_matches(key, [*KEY_TYPES, *UNSUPPORTED_KEYS], n=1)
            errors.append(f"{bad}: unknown key" + (f" (did you mean {close[0]}?)" if close else ""))
    return checked


def subset_spec(values: Mapping[str, Any], where: str) -> SubsetSpec:
    fields = {k: v for k, v in values.items() if k in SUBSET_FIELDS}
    ext = fields.get("caption_extension", "")
    if ext and not ext.startswith("."):  # sd-scripts accepts "txt" for ".txt"
        fields["caption_extension"] = "." + ext
    return SubsetSpec(**fields, where=where)


def load_dataset_config(
    path: str | Path, defaults: Mapping[str, Any] | None = None
) -> list[DatasetSpec]:
    """Read an sd-scripts dataset TOML (or .json): [general], [[datasets]], [[datasets.subsets]].

    A value is looked up in the subset, then its dataset, then [general], then `defaults` (the
    run's own options under their dataset-TOML names, e.g. {"caption_extension": ".txt",
    "resolution": "512", "batch_size": 4}: sd-scripts lets command-line values fill what the
    file leaves out), then SubsetSpec/DatasetSpec defaults.
    Every unknown, misplaced, unsupported or mistyped key is reported in one DatasetError.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset config {path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(f"dataset config {path}: cannot be read: {error}") from None

    errors: list[str] = []  # every one is reported, each naming its table and key
    defaults = dict(defaults or {})
    if "resolution" in defaults:  # the run config writes it as the CLI does: "512" or "512,768"
        defaults["resolution"] = parse_resolution(defaults["resolution"])
    fallback = _check_table(defaults, "general", "run options", errors)
    for key in set(raw) - {"general", "datasets"}:
        close = difflib.get_close_matches(key, ["general", "datasets"], n=1)
        hint = f" (did you mean [{close[0]}]?)" if close else " (only [general] and [[datasets]])"
        errors.append(f"top level: unknown table or key {key}{hint}")
    general_table = raw.get("general", {})
    if not isinstance(general_table, dict):
        errors.append("general must be a table: [general]")
        general_table = {}
    general = _check_table(general_table, "general", "general", errors)
    dataset_tables = raw.get("datasets", [])
    if not isinstance(dataset_tables, list) or not all(isinstance(t, dict) for t in dataset_tables):
        errors.append("datasets must be tables: [[datasets]]")
        dataset_tables = []
    elif not dataset_tables:
        errors.append("no [[datasets]] (each with [[datasets.subsets]])")

    datasets = []
    for d, dataset_table in enumerate(dataset_tables):
        where = f"datasets[{d}]"
        subset_tables = dataset_table.get("subsets", [])
        if not isinstance(subset_tables, list) or not all(
            isinstance(t, dict) for t in subset_tables
        ):
            errors.append(f"{where}: subsets must be tables: [[datasets.subsets]]")
            continue
        if not subset_tables:
            errors.append(f"{where}: has no [[datasets.subsets]]")
        dataset = _check_table(dataset_table, "dataset", where, errors)
        finetune = [("metadata_file" in t) for t in subset_tables]
        if any(finetune) and not all(finetune):
            errors.append(
                f"{where}: DreamBooth subsets (image_dir) and fine-tuning subsets "
                "(metadata_file) cannot share a dataset; split them into two [[datasets]]"
            )
        for key in sorted(DREAMBOOTH_ONLY_KEYS & set(dataset_table)) if any(finetune) else []:
            errors.append(f"{where}: {key} is only for DreamBooth (image_dir) datasets")
        subsets = []
        for s, subset_table in enumerate(subset_tables):
            subset_where = f"{where}.subsets[{s}]"
            subset = _check_table(subset_table, "subset", subset_where, errors)
            if finetune[s]:
                for key in sorted(DREAMBOOTH_ONLY_KEYS & set(subset_table)):
                    errors.append(
                        f"{subset_where}: {key} is only for DreamBooth (image_dir) subsets"
                    )
            elif "image_dir" not in subset_table:
                errors.append(f"{subset_where}: image_dir is missing")
            values = {**fallback, **general, **dataset, **subset}
            subsets.append(subset_spec(values, f"{path.name}: {subset_where}"))
        values = {**fallback, **general, **dataset}
        dataset_fields = {k: v for k, v in values.items() if k in DATASET_KEYS}
        datasets.append(
            DatasetSpec(subsets=subsets, **dataset_fields, where=f"{path.name}: {where}")
        )
    if errors:
        count = f"{len(errors)} problems" if len(errors) > 1 else "1 problem"
        raise DatasetError(f"dataset config {path}: {count}:\n  " + "\n  ".join(errors))
    return datasets
