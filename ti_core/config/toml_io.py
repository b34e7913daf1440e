"""Reading and writing the run config: our sectioned TOML, sd-scripts flat TOML, CLI flags.

Every value passes through `check_value`, so a file, a flag, the GUI and a dataset TOML get
the same strictness and the same messages: which key, which value, what was expected.
`parse_resolution` (data/spec.py) is re-exported here for the run config's callers.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from ti_core.atomic import write_text_atomic
from ti_core.config.run_config import (
    FIELDS,
    SCHEMA_VERSION,
    SECRET_OPTIONS,
    SECTIONS,
    Config,
    ConfigError,
    FieldInfo,
)
from ti_core.data.spec import parse_resolution
from ti_core.errors import closest

log = logging.getLogger(__name__)

TYPE_WORDS = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
TYPE_WORDS[list] = "a list of strings"


def load_config(path: str | Path) -> Config:
    """Load a TOML config: ours (sections) or sd-scripts' flat --config_file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found. Check the path.") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the config file ({error.strerror}).") from None
    return config_from_toml(text, source=str(path))


def config_from_toml(text: str, source: str = "<config>") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source}: not valid TOML: {error}") from None
    return config_from_dict(data, source)


def config_from_dict(data: dict[str, Any], source: str = "<config>") -> Config:
    """Build a Config from parsed TOML; unknown keys, wrong types and bad values are errors."""
    data = dict(data)
    version = data.pop("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version > SCHEMA_VERSION:
        raise ConfigError(
            f"{source}: schema_version = {show(version)}: this program reads schema_version "
            f"{SCHEMA_VERSION} or older. Update the program or remove the key."
        )
    config = Config()
    is_sectioned = data and all(k in SECTIONS and isinstance(v, dict) for k, v in data.items())
    if is_sectioned:
        for section, values in data.items():
            for key, value in values.items():
                _set_checked(config, key, value, source, section=section)
    else:
        # sd-scripts' --config_file: keys at top level or in any table, all one namespace.
        for key, value in data.items():
            if isinstance(value, dict):
                for inner_key, inner_value in value.items():
                    if not _ignored_flat_key(inner_key, source):
                        _set_checked(config, inner_key, inner_value, source, section=key)
            elif not _ignored_flat_key(key, source):
                _set_checked(config, key, value, source, section=None)
    check_combinations(config, source)
    return config


# Keys a flat sd-scripts --config_file may hold that sd-scripts reads from nowhere (so a file
# kohya_ss GUI wrote runs unchanged): the file's own path, and keys kohya_ss GUI writes for
# itself. Each is named in the log once, so nothing is dropped unseen.
IGNORED_FLAT_KEYS = {
    "config_file": "the command line's --config_file names the file; inside it, it does nothing",
    **dict.fromkeys(
        ("epoch", "noise_offset_type", "no_token_padding", "stop_text_encoder_training",
         "weigts"),
        "kohya_ss GUI writes it for itself; sd-scripts does not read it",
    ),
}  # fmt: skip


def _ignored_flat_key(key: str, source: str) -> bool:
    if key not in IGNORED_FLAT_KEYS:
        return False
    log.warning("%s: %s is not an option, left out (%s).", source, key, IGNORED_FLAT_KEYS[key])
    return True


def check_combinations(config: Config, source: str = "<config>") -> None:
    """Rules between options, checked after every load and every override."""
    data, token = config.dataset, config.token
    parse_resolution(data.resolution, f"{source}: [dataset] resolution")
    if data.use_object_template and data.use_style_template:
        raise ConfigError(
            f"{source}: use_object_template and use_style_template are both set; pick one."
        )
    if data.dataset_config and (data.train_data_dir or data.in_json):
        raise ConfigError(
            f"{source}: dataset_config is set together with train_data_dir/in_json; "
            "the dataset TOML describes the images, so remove the others."
        )
    if data.min_bucket_reso > data.max_bucket_reso:
        raise ConfigError(
            f"{source}: min_bucket_reso ({data.min_bucket_reso}) is larger than "
            f"max_bucket_reso ({data.max_bucket_reso})."
        )
    training = config.training
    for full, precision in (("full_fp16", "fp16"), ("full_bf16", "bf16")):
        if getattr(training, full) and training.mixed_precision != precision:
            raise ConfigError(
                f"{source}: [training] {full} = true needs mixed_precision = {show(precision)} "
                f"(it is {show(training.mixed_precision)}); set it, or turn {full} off."
            )
    _check_noise_and_loss(training, config.model.v_parameterization, source)
    if token.token_string and " " in token.token_string.strip():
        raise ConfigError(
            f"{source}: [token] token_string = {show(token.token_string)}: one word without "
            "spaces is expected (e.g. mychar4)."
        )


def _check_noise_and_loss(training: Any, v_parameterization: bool, source: str) -> None:
    """sd-scripts' rules between the noise and loss options (train_util.verify_training_args)."""
    if training.adaptive_noise_scale and not training.noise_offset:
        raise ConfigError(
            f"{source}: [training] adaptive_noise_scale = {show(training.adaptive_noise_scale)} "
            "raises noise_offset, which is off (0); set noise_offset (e.g. 0.1), or turn "
            "adaptive_noise_scale off."
        )
    if training.scale_v_pred_loss_like_noise_pred and not v_parameterization:
        raise ConfigError(
            f"{source}: [training] scale_v_pred_loss_like_noise_pred = true needs [model] "
            "v_parameterization = true (a v-prediction model); set it, or turn the scaling off."
        )
    if training.v_pred_like_loss and v_parameterization:
        raise ConfigError(
            f"{source}: [training] v_pred_like_loss = {show(training.v_pred_like_loss)} is for "
            "epsilon models, but [model] v_parameterization = true; turn one of them off."
        )
    exponential = training.huber_schedule == "exponential"
    if training.loss_type in ("huber", "smooth_l1") and exponential and not training.huber_c:
        raise ConfigError(
            f"{source}: [training] huber_c = 0 with the exponential huber_schedule: the "
            "schedule decays towards huber_c and needs it above 0; raise huber_c (e.g. 0.1)."
        )


def _set_checked(config: Config, key: str, value: Any, source: str, section: str | None) -> None:
    where = f"{source}: [{section}] {key}" if section else f"{source}: {key}"
    info = FIELDS.get(key)
    if info is None:
        raise ConfigError(f"{where} = {show(value)}: unknown option.{_did_you_mean(key)}")
    if section in SECTIONS and section != info.section:
        raise ConfigError(f"{where}: this option belongs in [{info.section}], not [{section}].")
    set_option(config, key, value, where)


def set_option(config: Config, key: str, value: Any, where: str | None = None) -> None:
    """Check one value against its declaration and store it; raises ConfigError naming `where`."""
    info = FIELDS.get(key)
    if info is None:
        raise ConfigError(f"{where or key} = {show(value)}: unknown option.{_did_you_mean(key)}")
    checked = check_value(info, value, where or key)
    setattr(getattr(config, info.section), key, checked)


def _did_you_mean(key: str) -> str:
    close = closest(key, FIELDS, cutoff=0.7)
    return f" Did you mean '{close}'?" if close else " See the option table in README.md."


def check_value(info: FieldInfo, value: Any, where: str) -> Any:
    """The value as its option's type, or a ConfigError "<where> = <value>: expected ...".
    The run config and the dataset TOML reader both check with this."""
    if info.text and isinstance(value, str):
        return _check_text_form(info, value, where)
    value = _check_type(info, value, where)
    if info.choices is not None and value not in info.choices:
        choices = ", ".join(show(c) for c in info.choices)
        raise ConfigError(f"{where} = {show(value)}: expected one of {choices}.")
    if info.min is not None and value < info.min:
        raise ConfigError(f"{where} = {show(value)}: expected at least {info.min}.")
    if info.max is not None and value > info.max:
        raise ConfigError(f"{where} = {show(value)}: expected at most {info.max}.")
    return value


def _check_text_form(info: FieldInfo, value: str, where: str) -> Any:
    """A number option given as text: a plain number becomes the number, other text must
    parse (today only learning_rate's piecewise form, parsed by ti_core.training.optim)."""
    from ti_core.training.optim_args import parse_learning_rate

    try:
        parsed = parse_learning_rate(value)
    except ConfigError as error:
        raise ConfigError(f"{where} = {show(value)}: {error}") from None
    if isinstance(parsed, float):
        return check_value(info, parsed, where)
    return value


def _check_type(info: FieldInfo, value: Any, where: str) -> Any:
    expected = info.type
    ok = isinstance(value, expected) and not (expected is not bool and isinstance(value, bool))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is list and ok and all(isinstance(item, str) for item in value):
        return list(value)
    if expected is list and isinstance(value, str):
        return [value]
    if not ok or expected is list:
        raise ConfigError(f"{where} = {show(value)}: expected {TYPE_WORDS[expected]}.")
    return value


def show(value: Any) -> str:
    """A value as it would be written in TOML, so messages quote what the user typed."""
    try:
        return tomli_w.dumps({"v": value})[4:].strip()
    except (TypeError, ValueError):
        return repr(value)


def config_to_dict(config: Config) -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, **dataclasses.asdict(config)}


def config_to_toml(config: Config) -> str:
    return tomli_w.dumps(config_to_dict(config))


def save_config(config: Config, path: str | Path) -> Path:
    """Write the config atomically, so a reader never sees half a file."""
    path = Path(path)
    write_text_atomic(path, config_to_toml(config))
    return path


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One --flag per option, named as the config key; values are checked like file values."""
    for section in SECTIONS:
        group = parser.add_argument_group(f"[{section}] options")
        for info in (i for i in FIELDS.values() if i.section == section):
            help_text = f"{info.help} (default: {show(info.default)})"
            if info.type is bool:
                group.add_argument(
                    f"--{info.name}",
                    action=argparse.BooleanOptionalAction,
                    default=argparse.SUPPRESS,
                    help=help_text,
                )
            elif info.type is list:
                group.add_argument(
                    f"--{info.name}", nargs="*", default=argparse.SUPPRESS, help=help_text
                )
            else:
                group.add_argument(
                    f"--{info.name}", metavar="VALUE", default=argparse.SUPPRESS, help=help_text
                )


def apply_cli_overrides(config: Config, args: argparse.Namespace) -> Config:
    """Flags given on the command line override the file; the rest keep the file's values."""
    for name, info in FIELDS.items():
        if name in vars(args):
            value = _from_cli_text(info, getattr(args, name))
            set_option(config, name, value, where=f"--{name}")
    check_combinations(config, "command line")
    return config


def _from_cli_text(info: FieldInfo, text: Any) -> Any:
    if info.type is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"--{info.name} {text}: expected a whole number.") from None
    if info.type is float:
        try:
            return float(text)
        except ValueError:
            if info.text:
                return text  # checked as the option's text form
            raise ConfigError(f"--{info.name} {text}: expected a number.") from None
    return text


def config_to_command(config: Config) -> str:
    """The equivalent `python -m ti_core train` line: a flag per value that is not the default."""
    parts = ["python", "-m", "ti_core", "train"]
    for name, info in FIELDS.items():
        value = getattr(getattr(config, info.section), name)
        if value == info.default or name in SECRET_OPTIONS:  # a line to copy must not leak it
            continue
        if info.type is bool:
            parts.append(f"--{name}" if value else f"--no-{name}")
        elif info.type is list:
            parts += [f"--{name}", *value]
        else:
            parts += [f"--{name}", str(value)]
    return shlex.join(parts)
