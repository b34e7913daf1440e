"""User-facing errors: the CLI prints them as one line (exit code 2), the GUI as a message."""


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
