"""A pasted sd-scripts command line (`accelerate launch ... train_textual_inversion.py --flag
value ...`) or a pasted TOML (sd-scripts' flat --config_file, or ours) read into a run config.

The flags are the CLI's own (toml_io.add_config_arguments) and every value passes the same
check; whatever comes before the training script (accelerate's or python's own flags) is
skipped. Torch-free: the GUI's Start tab uses it.
"""

from __future__ import annotations

import argparse
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from ti_core.config.run_config import FIELDS, SECTIONS, Config
from ti_core.config.toml_io import (
    add_config_arguments,
    apply_cli_overrides,
    config_from_dict,
    load_config,
)
from ti_core.errors import ConfigError, closest

TI_SCRIPTS = ("train_textual_inversion.py", "sdxl_train_textual_inversion.py")
# The first word of a command line: a launcher (accelerate, python, torchrun; any folder in
# front, .exe on Windows), a script, or a flag.
LAUNCHER = re.compile(r"^(accelerate|python[0-9.]*|py|torchrun)(\.exe)?$", re.IGNORECASE)
# End-of-line continuations of bash (\), cmd.exe (^) and PowerShell (`).
CONTINUATION = re.compile(r"[\\^`][ \t]*\r?\n")
# A documentation placeholder such as <output folder for the trained model>: the shell would
# read < as a redirection, so a pasted example keeps it as one word, left for the user.
PLACEHOLDER = re.compile(r"<[^<>\n]*>")
SPACED_PLACEHOLDER = re.compile(r"(?<![\"'])<[^<>\n\"']*\s[^<>\n\"']*>(?![\"'])")


@dataclass
class PastedConfig:
    config: Config
    kind: str  # what was pasted, in words: "sd-scripts command line (...)", "sd-scripts TOML"
    options: list[str] = field(default_factory=list)  # the option names the paste set
    notes: list[str] = field(default_factory=list)  # what is left to the user, in words


def config_from_paste(text: str, cwd: str | Path | None = None) -> PastedConfig:
    """A command line or a TOML, told apart by the first word; `cwd` is where relative
    --config_file paths are read from (the folder the command would run in)."""
    if not (text or "").strip():
        raise ConfigError(
            "Nothing pasted: paste an sd-scripts command line (accelerate launch ... "
            "train_textual_inversion.py --flag value ...) or the text of a TOML config."
        )
    if looks_like_command(text):
        return config_from_command_line(text, cwd)
    return config_from_pasted_toml(text)


def looks_like_command(text: str) -> bool:
    """The first word (after blank and comment lines) is a launcher, a .py script or a flag."""
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        first = re.split(r"[\\/]", words[0].strip("\"'"))[-1]
        return bool(LAUNCHER.match(first)) or first.endswith(".py") or first.startswith("-")
    return False


def split_command(text: str) -> list[str]:
    """The command's words as a shell reads them: continuations joined, quotes removed.
    Backslashes stay (Windows paths), and a spaced <placeholder> stays one word."""
    joined = CONTINUATION.sub(" ", text)
    joined = SPACED_PLACEHOLDER.sub(lambda match: f'"{match.group(0)}"', joined)
    lexer = shlex.shlex(joined, posix=True)
    lexer.whitespace_split = True
    lexer.escape = ""
    try:
        return list(lexer)
    except ValueError:  # shlex's only complaint: a quote that is never closed
        raise ConfigError(
            "The command line has a quote (\" or ') without its closing one; close it or "
            "remove it, then paste again."
        ) from None


def training_flags(words: list[str]) -> tuple[str, list[str]]:
    """(the training script's name, the flags after it). Everything before the script is the
    launcher's (accelerate's --num_cpu_threads_per_process, --mixed_precision, ...)."""
    for index, word in enumerate(words):
        name = re.split(r"[\\/]", word)[-1]
        if name.lower().endswith(".py"):
            return name, words[index + 1 :]
        if word == "-m" and index + 1 < len(words) and words[index + 1] == "ti_core":
            rest = words[index + 2 :]
            return "python -m ti_core", rest[1:] if rest[:1] == ["train"] else rest
    first = re.split(r"[\\/]", words[0])[-1] if words else ""
    if LAUNCHER.match(first):
        raise ConfigError(
            f"The command line starts with {first} but names no training script: expected "
            f"{TI_SCRIPTS[0]} (or {TI_SCRIPTS[1]}) before the training options."
        )
    return "", words  # only the flags were pasted


class _FlagParser(argparse.ArgumentParser):
    """argparse that raises ConfigError instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"The command line: {message}.")


def flag_parser() -> argparse.ArgumentParser:
    parser = _FlagParser(prog="the command line", add_help=False, allow_abbrev=False)
    parser.add_argument("--config_file", "--config", dest="config_file", default=None)
    add_config_arguments(parser)
    return parser


def config_from_command_line(text: str, cwd: str | Path | None = None) -> PastedConfig:
    """sd-scripts' rules: --config_file is read first (".toml" added when missing), the other
    flags override it, options not given keep their defaults."""
    script, flags = training_flags(split_command(text))
    args, extras = flag_parser().parse_known_args(flags)
    if extras:
        raise ConfigError(unknown_words_message(extras))
    notes = take_placeholders(args)
    if script and script != "python -m ti_core" and script not in TI_SCRIPTS:
        notes.append(
            f"The command runs {script}, not {TI_SCRIPTS[0]}: its options were read as "
            "Textual Inversion options."
        )
    config_file = vars(args).pop("config_file", None)
    config = load_config(config_file_path(config_file, cwd)) if config_file else Config()
    config = apply_cli_overrides(config, args)
    options = [name for name in FIELDS if name in vars(args)]
    kind = f"sd-scripts command line ({script})" if script else "command-line options"
    if script == "python -m ti_core":
        kind = "command line (python -m ti_core train)"
    return PastedConfig(config, kind, options, notes)


def config_file_path(value: str, cwd: str | Path | None) -> Path:
    path = Path(value if value.endswith(".toml") else value + ".toml").expanduser()
    if not path.is_absolute():
        path = Path(cwd or Path.cwd()) / path
    if not path.is_file():
        raise ConfigError(
            f"--config_file {value}: {path} not found (a relative path is read from {cwd or '.'}"
            "); give its full path, or paste the TOML's text instead of the command line."
        )
    return path


def take_placeholders(args: argparse.Namespace) -> list[str]:
    """Drop the options whose value is a <placeholder> from a documentation example: they keep
    their defaults and are named, so the user fills them in."""
    notes = []
    for name, value in list(vars(args).items()):
        values = value if isinstance(value, list) else [value]
        if any(isinstance(item, str) and PLACEHOLDER.fullmatch(item) for item in values):
            delattr(args, name)
            notes.append(f"--{name} is the placeholder {' '.join(values)}: fill in {name}.")
    return notes


def unknown_words_message(extras: list[str]) -> str:
    """Every unknown option (with "did you mean"), and words that are no option's value."""
    unknown, stray, after_unknown = [], [], False
    for word in extras:
        if word.startswith("-"):
            name = word.lstrip("-").split("=", 1)[0]
            close = closest(name, FIELDS)
            unknown.append(f"--{name}" + (f" (did you mean --{close}?)" if close else ""))
            after_unknown = "=" not in word
        elif after_unknown:
            after_unknown = False  # the unknown option's value
        else:
            stray.append(word)
    parts = []
    if unknown:
        parts.append(f"options this trainer does not know: {', '.join(unknown)}")
    if stray:
        shown = ", ".join(f"'{word}'" for word in stray)
        parts.append(f"words that are no option's value: {shown}")
    return (
        f"The command line has {'; and '.join(parts)}. Fix or remove them and paste again "
        "(README.md lists every option)."
    )


def config_from_pasted_toml(text: str) -> PastedConfig:
    """Our sectioned TOML or sd-scripts' flat --config_file; every unknown key is named."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(
            "The pasted text is neither a command line (those start with accelerate, python, "
            f"the script or a --flag) nor valid TOML: {error}."
        ) from None
    data.pop("schema_version", None)
    sectioned = bool(data) and all(k in SECTIONS and isinstance(v, dict) for k, v in data.items())
    keys = [
        key for top, value in data.items() for key in (value if isinstance(value, dict) else [top])
    ]
    unknown = [key for key in keys if key not in FIELDS]
    if unknown:
        named = [
            f"{key} (did you mean {close}?)" if (close := closest(key, FIELDS)) else key
            for key in unknown
        ]
        raise ConfigError(
            f"The pasted TOML has keys this trainer does not know: {', '.join(named)}. Fix or "
            "remove them and paste again (README.md lists every option)."
        )
    config = config_from_dict(data, source="the pasted TOML")
    return PastedConfig(config, "TOML" if sectioned else "sd-scripts TOML", keys)
