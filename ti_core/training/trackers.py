"""TensorBoard and wandb logs of a run (sd-scripts' log_with, logging_dir, log_prefix,
log_tracker_name, log_tracker_config, log_config, wandb_*): any scalars per step, flushed as
they come so a TensorBoard open on logging_dir shows the run live. Off by default.
"""

from __future__ import annotations

import logging
import time
import tomllib
from collections.abc import Mapping
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from ti_core.config.run_config import FIELDS, SECRET_OPTIONS, Config
from ti_core.errors import ConfigError
from ti_core.run_folder.writer import RunFolder

log = logging.getLogger(__name__)

DEFAULT_TRACKER_NAME = "textual_inversion"  # sd-scripts' project name for TI runs
_OPEN: list[Trackers] = []  # closed by close_trackers() when the train command ends


def chosen_trackers(config: Config) -> list[str]:
    """The trackers log_with and logging_dir turn on, as sd-scripts decides: log_with names
    them (all = both); left empty, a logging_dir alone means TensorBoard."""
    saving = config.saving
    log_with = saving.log_with or ("tensorboard" if saving.logging_dir else "")
    return ["tensorboard", "wandb"] if log_with == "all" else [log_with] if log_with else []


def check_trackers(config: Config) -> None:
    """The user errors of the logging options, before the model loads."""
    saving, names = config.saving, chosen_trackers(config)
    if "tensorboard" in names and not saving.logging_dir:
        raise ConfigError(
            f"log_with = {saving.log_with}: TensorBoard needs logging_dir, the folder its event "
            "files go to; set it, or use log_with = wandb."
        )
    if "tensorboard" in names and find_spec("tensorboard") is None:
        raise ConfigError(
            "TensorBoard logging is on (log_with / logging_dir) but the tensorboard package is "
            "not installed: run `pip install -r requirements.txt`, or turn it off."
        )
    if "wandb" in names and find_spec("wandb") is None:
        raise ConfigError(
            f"log_with = {saving.log_with}: the wandb package is not installed; run "
            "`pip install wandb` and log in, or use log_with = tensorboard."
        )
    tracker_settings(config)


def tracker_settings(config: Config) -> dict[str, dict[str, Any]]:
    """log_tracker_config: {tracker name: keyword arguments}, read and checked."""
    path = config.saving.log_tracker_config
    if not path:
        return {}
    try:
        settings = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(
            f"log_tracker_config = {path}: cannot read it ({error.strerror})."
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"log_tracker_config = {path}: not valid TOML: {error}") from None
    for name, table in settings.items():
        if not isinstance(table, dict):
            raise ConfigError(
                f"log_tracker_config = {path}: {name} = {table!r}: expected a table of "
                "settings, e.g. [wandb] or [tensorboard]."
            )
    return settings


def logged_config(config: Config) -> dict[str, Any]:
    """log_config: the options as trackers take them, without secrets and paths (which say
    more about a machine than about the run), as sd-scripts leaves them out."""
    values: dict[str, Any] = {}
    for name, info in FIELDS.items():
        if name in SECRET_OPTIONS or info.path:
            continue
        value = getattr(getattr(config, info.section), name)
        values[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return values


class Trackers:
    """The run's trackers; each `log` call goes to all of them (none when logging is off)."""

    def __init__(self, writers: list[Any]) -> None:
        self.writers = writers

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        for writer in self.writers:
            writer.log(scalars, step)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
        self.writers = []


def open_trackers(config: Config, run: RunFolder) -> Trackers:
    """The trackers config asks for; in a data-parallel run only the first process logs."""
    names = chosen_trackers(config) if run.writer else []
    if not names:
        return Trackers([])
    saving, settings = config.saving, tracker_settings(config)
    project = saving.log_tracker_name or DEFAULT_TRACKER_NAME
    folder = None
    if saving.logging_dir:  # a subfolder per run, as sd-scripts names them
        started = time.strftime("%Y%m%d%H%M%S", time.localtime())
        folder = Path(saving.logging_dir) / f"{saving.log_prefix}{started}"
    values = logged_config(config) if saving.log_config else None
    writers: list[Any] = []
    if "tensorboard" in names and folder is not None:
        writers.append(TensorBoardWriter(folder / project, settings.get("tensorboard", {}), values))
        log.info("TensorBoard logs: %s (tensorboard --logdir %s)", folder, saving.logging_dir)
    if "wandb" in names:
        writers.append(WandbWriter(config, project, folder, settings.get("wandb", {}), values))
    trackers = Trackers(writers)
    _OPEN.append(trackers)
    return trackers


def close_trackers() -> None:
    """Close the trackers this process opened (at the end of the train command, however it
    ended)."""
    while _OPEN:
        _OPEN.pop().close()


def log_in_to_wandb(config: Config, api_key: str) -> None:
    """wandb_api_key: log in at start, before the model loads."""
    if api_key and "wandb" in chosen_trackers(config):
        import wandb

        wandb.login(key=api_key)


class TensorBoardWriter:
    def __init__(self, folder: Path, settings: dict[str, Any], values: dict | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        try:
            self.writer = SummaryWriter(str(folder), **settings)
        except TypeError as error:
            raise ConfigError(f"log_tracker_config [tensorboard]: {error}") from None
        if values:
            self.writer.add_hparams(values, {})

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbWriter:
    def __init__(
        self,
        config: Config,
        project: str,
        folder: Path | None,
        settings: dict[str, Any],
        values: dict | None,
    ) -> None:
        import wandb

        options: dict[str, Any] = {"name": config.saving.wandb_run_name or None}
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            options["dir"] = str(folder)
        self.run = wandb.init(project=project, config=values, **{**options, **settings})

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        self.run.log(dict(scalars), step=step)

    def close(self) -> None:
        self.run.finish()
