"""User-facing errors: the CLI prints them as one line (exit code 2), the GUI as a message."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TiError(Exception):
    """A mistake the user can fix; the message says what is wrong, where, and what to do."""


class ConfigError(TiError, ValueError):
    """A bad key or value in a config file, on the command line or in the GUI."""


class ModelError(TiError):
    """A base model, VAE or checkpoint that cannot be found, read or recognised."""


class DatasetError(TiError):
    """A dataset TOML, folder layout or caption/metadata file that cannot be used."""


class TokenError(TiError):
    """A token string, init word or starting embedding that cannot make the placeholder tokens."""


def closest(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The choice a mistyped `word` most likely meant (case-insensitive), for "did you mean"."""
    by_lower = {choice.lower(): choice for choice in choices}
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=cutoff)
    return by_lower[close[0]] if close else None
