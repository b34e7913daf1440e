"""How an option is declared: `opt()` on a dataclass field carries its default, help, limits and
what kind of value it is (a path to a file or folder, a sampler name...). The config loader, the
CLI flags, the dataset TOML reader, the generation options, the README table and the GUI's
widgets and pickers all read these declarations, so an option is written once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

FILE, FOLDER, FILE_OR_FOLDER = "file", "folder", "file or folder"
PATH_KINDS = (FILE, FOLDER, FILE_OR_FOLDER)


def opt(
    default: Any,
    help: str,
    *,
    choices: tuple | None = None,
    min: float | None = None,
    max: float | None = None,
    text: str | None = None,
    path: str | None = None,
    suffixes: tuple[str, ...] = (),
    hub_id: bool = False,
    made_by_run: bool = False,
    levels: tuple[str, ...] = (),
) -> Any:
    """Declare one option.

    text: a number option that also takes a text form (learning_rate's piecewise rates).
    path: FILE, FOLDER or FILE_OR_FOLDER when the value names something on disk; `suffixes`
      are the file endings a picker offers; `hub_id`: a Hugging Face id is accepted instead;
      `made_by_run`: the run (or the GUI) makes it, so it need not exist before Train.
    levels: where a dataset key may appear in an sd-scripts dataset TOML ("general",
      "dataset", "subset"); empty for options that are not dataset TOML keys.
    """
    if path is not None and path not in PATH_KINDS:
        raise ValueError(f"path={path!r}: expected one of {PATH_KINDS}")
    metadata = {
        "help": help,
        "choices": choices,
        "min": min,
        "max": max,
        "text": text,
        "path": path,
        "suffixes": suffixes,
        "hub_id": hub_id,
        "made_by_run": made_by_run,
        "levels": levels,
    }
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class FieldInfo:
    """What the loader, the CLI and the GUI need to know about one option."""

    section: str
    name: str
    type: type
    default: Any
    help: str
    choices: tuple | None
    min: float | None
    max: float | None
    text: str | None = None
    path: str | None = None
    suffixes: tuple[str, ...] = ()
    hub_id: bool = False
    made_by_run: bool = False
    levels: tuple[str, ...] = ()


TYPES = {"str": str, "bool": bool, "int": int, "float": float, "list[str]": list}


def field_infos(cls: type, section: str = "") -> dict[str, FieldInfo]:
    """The declared options of one dataclass, by name (fields without opt() are skipped)."""
    infos: dict[str, FieldInfo] = {}
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        annotation = f.type if isinstance(f.type, str) else f.type.__name__
        infos[f.name] = FieldInfo(
            section=section, name=f.name, type=TYPES[annotation], default=default, **f.metadata
        )
    return infos


def fields_by_name(cls: type) -> dict[str, FieldInfo]:
    """Every option of a sectioned config (a dataclass of dataclasses) by name: names are
    unique across sections, as sd-scripts' flags are."""
    infos: dict[str, FieldInfo] = {}
    for section in dataclasses.fields(cls):
        infos.update(field_infos(section.default_factory(), section.name))
    return infos
