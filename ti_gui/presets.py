"""Presets: the ones shipped in presets/ and the user's own, saved from the form into a folder
outside the install (an update or a fresh clone keeps them), listed together.

A user preset is named "mine: <name>" in the list so it is never mistaken for a shipped one,
and it may not take a shipped preset's name (the list would show two of one name).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ti_core.atomic import write_text_atomic
from ti_core.config.toml_io import config_from_toml
from ti_core.errors import ConfigError

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "presets"
MINE = "mine: "
# A name that is a plain file name on every system (no folders, no dots in front).
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$")


def user_dir() -> Path:
    """Where the user's presets live: $TI_TRAINER_PRESETS, else the XDG config folder."""
    if os.environ.get("TI_TRAINER_PRESETS"):
        return Path(os.environ["TI_TRAINER_PRESETS"]).expanduser()
    config_home = os.environ.get("XDG_CONFIG_HOME") or "~/.config"
    return Path(config_home).expanduser() / "ti-trainer" / "presets"


def shipped_names() -> list[str]:
    return sorted(path.stem for path in SHIPPED_DIR.glob("*.toml"))


def user_names() -> list[str]:
    folder = user_dir()
    return sorted(path.stem for path in folder.glob("*.toml")) if folder.is_dir() else []


def preset_names() -> list[str]:
    """Shipped presets first, then the user's, marked as theirs."""
    return [*shipped_names(), *(MINE + name for name in user_names())]


def preset_path(choice: str) -> Path:
    if choice.startswith(MINE):
        return user_dir() / f"{choice.removeprefix(MINE)}.toml"
    return SHIPPED_DIR / f"{choice}.toml"


def read_preset(choice: str) -> str:
    """The preset's TOML; a missing one comes back as a TOML comment the form refuses to apply
    only in words (applying a comment-only TOML sets nothing)."""
    path = preset_path(choice or "")
    if not choice or not path.is_file():
        return f"# preset {choice!r} not found (looked for {path})\n"
    return path.read_text(encoding="utf-8")


def save_preset(name: str, toml_text: str) -> tuple[str, Path]:
    """Write the form's TOML as the user's preset `name`; returns (its list entry, its file).
    The TOML is checked first, so a preset that is saved always loads."""
    name = (name or "").strip().removeprefix(MINE).strip()
    if not NAME.match(name):
        raise ConfigError(
            f"Preset name {name!r}: use letters, digits, spaces, '-', '_' or '.', starting with "
            "a letter or digit (at most 64 characters)."
        )
    if name in shipped_names():
        raise ConfigError(
            f"Preset name {name!r} is a shipped preset's name; pick another name (shipped presets "
            "are not changed, so an update cannot overwrite yours)."
        )
    config_from_toml(toml_text, source="the form")  # refuses what would not load
    path = user_dir() / f"{name}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, toml_text)
    return MINE + name, path


def open_config_file(path_text: str) -> str:
    """The text of a TOML config file on this computer, for the editor and the form."""
    path = Path((path_text or "").strip().strip('"')).expanduser()
    if not str(path_text or "").strip():
        raise ConfigError("Type or paste the path of a .toml config file first.")
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; give the path of a .toml config file.")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found. Check the path.")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read it as a text file ({error}).") from None
