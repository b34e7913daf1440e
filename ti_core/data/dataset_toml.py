"""sd-scripts' dataset TOML ([general], [[datasets]], [[datasets.subsets]]) read strictly into
DatasetSpecs, with general -> dataset -> subset inheritance. Torch-free.

Which keys exist, their types, limits and the tables they may be in are the declarations in
data/spec.py; values are checked by the run config's own check, so a limit cannot disagree.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ti_core.config.options import FieldInfo, field_infos
from ti_core.config.run_config import DatasetConfig
from ti_core.config.toml_io import check_value
from ti_core.data.spec import (
    SUBSET,
    BucketOptions,
    CaptionOptions,
    DatasetSpec,
    MaskOptions,
    SubsetSpec,
    ValidationOptions,
    parse_face_crop_range,
    parse_resolution,
)
from ti_core.errors import ConfigError, DatasetError, closest

# Every key a dataset TOML may set. DatasetSpec holds resolution parsed, so its declaration
# (the text a person writes) is BucketOptions'.
KEYS: dict[str, FieldInfo] = {
    **field_infos(SubsetSpec),
    **field_infos(BucketOptions),
    **field_infos(ValidationOptions),
    **field_infos(DatasetSpec),
}
SUBSET_KEYS = {name for name, info in KEYS.items() if SUBSET in info.levels}
DATASET_KEYS = set(KEYS) - SUBSET_KEYS
# The keys the run config shares, by their run option name: they fill what a file leaves out.
RUN_KEYS = [
    f.name
    for options in (BucketOptions, ValidationOptions, CaptionOptions, MaskOptions)
    for f in dataclasses.fields(options)
]
DREAMBOOTH_ONLY_KEYS = {"caption_extension", "class_tokens", "is_reg", "cache_info"}
# fmt: off
# sd-scripts keys we do not implement, with the value that means "off" (None: none does).
UNSUPPORTED_KEYS: dict[str, Any] = {"network_multiplier": 1.0, "custom_attributes": None}
# fmt: on
ARGUMENT_NAMES = {"train_batch_size": "batch_size", "dataset_repeats": "num_repeats"}


def _show(value: Any) -> str:
    """A value as the file wrote it, on one line (toml_io's show puts a list on several)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def run_values(run: DatasetConfig) -> dict[str, Any]:
    """The run's values of the keys it shares with a dataset TOML, under their dataset TOML
    names (train_batch_size is batch_size; dataset_repeats is num_repeats, which sd-scripts
    fills a subset's num_repeats with too); resolution stays text. caption_extention, sd-scripts'
    old spelling, sets caption_extension."""
    values = {name: getattr(run, name) for name in RUN_KEYS}
    values["caption_extension"] = _caption_extension(run)
    return {**values, "batch_size": run.train_batch_size, "num_repeats": run.dataset_repeats}


def _caption_extension(run: DatasetConfig) -> str:
    legacy, current = run.caption_extention, run.caption_extension
    if not legacy:
        return current
    dotted = [ext if ext.startswith(".") else "." + ext for ext in (legacy, current)]
    if current != KEYS["caption_extension"].default and dotted[0] != dotted[1]:
        raise ConfigError(
            f"[dataset] caption_extention = {_show(legacy)} and caption_extension = "
            f"{_show(current)} disagree: caption_extention is sd-scripts' old spelling of "
            "caption_extension; keep only caption_extension."
        )
    return legacy


def _check_value(key: str, value: Any, where: str) -> Any:
    """The value as its key's type; a ConfigError names the table, key and value."""
    if key == "face_crop_aug_range":  # a file says [2.0, 4.0]; "2.0,4.0" is the run's form
        parsed = parse_face_crop_range(value, f"{where}: {key}")
        return "" if parsed is None else f"{parsed[0]:g},{parsed[1]:g}"
    if key != "resolution":
        return check_value(KEYS[key], value, f"{where}: {key}")
    if isinstance(value, str):  # a file says 512 or [512, 768]; "512" is the run config's form
        raise ConfigError(
            f"{where}: resolution = {_show(value)}: expected a size (512) or [width, height]"
        )
    return parse_resolution(value, f"{where}: resolution")


def _check_table(table: Mapping[str, Any], level: str, where: str, errors: list[str]) -> dict:
    """Keep the keys allowed at `level` (general | dataset | subset), noting every bad one."""
    checked = {}
    for key, value in table.items():
        if level == "dataset" and key == "subsets":
            continue
        bad = f"{where}: {key} = {_show(value)}"
        info = KEYS.get(key)
        if key in UNSUPPORTED_KEYS:
            if UNSUPPORTED_KEYS[key] is not None and value == UNSUPPORTED_KEYS[key]:
                continue  # the value that means "off": nothing is being ignored
            errors.append(f"{bad}: sd-scripts' {key} is not supported by this trainer; remove it")
        elif info is None and key in ARGUMENT_NAMES:
            errors.append(f"{bad}: unknown key; in a dataset TOML it is {ARGUMENT_NAMES[key]}")
        elif info is None:
            close = closest(key, [*KEYS, *UNSUPPORTED_KEYS])
            errors.append(f"{bad}: unknown key" + (f" (did you mean {close}?)" if close else ""))
        elif level not in info.levels and info.levels == (SUBSET,):
            errors.append(f"{bad}: {key} belongs in a [[datasets.subsets]] table")
        elif level not in info.levels:
            errors.append(f"{bad}: {key} is a dataset setting; set it in [[datasets]] or [general]")
        else:
            try:
                checked[key] = _check_value(key, value, where)
            except ConfigError as error:
                errors.append(str(error))
    return checked


def subset_spec(values: Mapping[str, Any], where: str) -> SubsetSpec:
    fields = {k: v for k, v in values.items() if k in SUBSET_KEYS}
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
    if isinstance(defaults.get("resolution"), str):  # the run config's text: "512" or "768,512"
        try:
            defaults["resolution"] = parse_resolution(
                defaults["resolution"], "run options: resolution"
            )
        except ConfigError as error:
            errors.append(str(error))
            del defaults["resolution"]
    fallback = _check_table(defaults, "general", "run options", errors)
    for key in set(raw) - {"general", "datasets"}:
        close = closest(key, ["general", "datasets"])
        hint = f" (did you mean [{close}]?)" if close else " (only [general] and [[datasets]])"
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
