"""One widget per config option, bound by name: build it from the option's FieldInfo, read the
widgets back into a Config (errors per field, never a traceback), and fill them from a Config.

Tabs call `form.add(name)` / `form.add_rest(section)`; events take `form.inputs()` (a set, so
handlers receive {component: value}) and return `form.values(config)` (a {component: value}).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import gradio as gr

from ti_core.config.run_config import FIELDS, Config, FieldInfo
from ti_core.config.toml_io import check_combinations, parse_resolution, set_option
from ti_core.embeddings.token_preview import preview
from ti_core.errors import TiError
from ti_core.models.checkpoint_info import looks_like_hub_id

INVALID_CLASS = "ti-invalid"  # marks a widget whose value the config refuses (see app.CSS)
PROBLEM_MARK = "\u26a0 "  # starts a widget's info text while it shows a problem instead of help
VALID_MESSAGE = "**Valid.**"  # the form status when Train may start


def field_label(info: FieldInfo) -> str:
    return info.name


def field_info_text(info: FieldInfo) -> str:
    return info.help


def make_widget(info: FieldInfo, **overrides: Any) -> gr.components.Component:
    """The widget for one option: Checkbox (bool), Dropdown (choices), Number (int/float with
    its limits), Textbox otherwise."""
    common: dict[str, Any] = {
        "label": field_label(info),
        "info": field_info_text(info),
        "elem_id": f"field-{info.name}",
    }
    value = overrides.pop("value", to_widget_value(info, info.default))
    common.update(overrides)
    if info.type is bool:
        return gr.Checkbox(value=value, **common)
    if info.choices is not None:
        return gr.Dropdown(choices=list(info.choices), value=value, **common)
    if info.type in (int, float) and not info.text:
        return gr.Number(
            value=value,
            precision=0 if info.type is int else None,
            minimum=info.min,
            maximum=info.max,
            **common,
        )
    if info.type is list:
        common["info"] = f"{common['info']} One per line."
        return gr.Textbox(value=value, lines=2, **common)
    return gr.Textbox(value=value, lines=1, max_lines=1, **common)


def to_widget_value(info: FieldInfo, value: Any) -> Any:
    if info.type is list:
        return "\n".join(value)
    if info.text and not isinstance(value, str):
        return repr(value) if isinstance(value, float) else str(value)
    return value


def from_widget_value(info: FieldInfo, value: Any) -> Any:
    """The widget's value as the config type; a value that cannot be converted is passed on
    unchanged so set_option names it in its message."""
    if info.type is list:
        return [line.strip() for line in (value or "").splitlines() if line.strip()]
    if info.text and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value.strip()
    if info.type is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if info.type is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if info.type is str and value is None:
        return ""
    return value


@dataclasses.dataclass
class FormResult:
    config: Config | None
    errors: dict[str, str]  # option name -> message; "" key for rules between options
    # Values the config takes but a run cannot start with (a missing path, an empty or known
    # token): the TOML still follows the form, Train does not.
    blockers: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.config is not None and not self.blockers

    def problems(self) -> dict[str, str]:
        """Everything to show at the widgets, by option name."""
        return {**self.blockers, **self.errors}

    def message(self) -> str:
        if self.errors:
            lines = [f"- {message}" for message in self.errors.values()]
            return "**Not valid:**\n" + "\n".join(lines)
        if self.blockers:
            lines = [f"- {message}" for message in self.blockers.values()]
            return "**Not ready to train:**\n" + "\n".join(lines)
        return VALID_MESSAGE


class Form:
    """The widgets of every tab, by option name."""

    def __init__(self, initial: Config | None = None) -> None:
        self.initial = initial or Config()  # the values the widgets start with
        self.widgets: dict[str, gr.components.Component] = {}
        self.help: dict[str, str] = {}  # each widget's info text, shown again once a value is fixed

    def add(self, name: str, **overrides: Any) -> gr.components.Component:
        if name in self.widgets:
            raise ValueError(f"option {name!r} has a widget already")
        info = FIELDS[name]
        start = getattr(getattr(self.initial, info.section), name)
        widget = make_widget(info, value=to_widget_value(info, start), **overrides)
        self.widgets[name] = widget
        self.help[name] = widget.info or ""
        return widget

    def add_rest(self, section: str) -> list[gr.components.Component]:
        """Widgets for the options of `section` no tab has placed yet (a new field shows up)."""
        names = [n for n, i in FIELDS.items() if i.section == section and n not in self.widgets]
        return [self.add(name) for name in names]

    def __getitem__(self, name: str) -> gr.components.Component:
        return self.widgets[name]

    def inputs(self) -> set[gr.components.Component]:
        return set(self.widgets.values())

    def outputs(self) -> list[gr.components.Component]:
        return list(self.widgets.values())

    def names_by_component(self) -> dict[int, str]:
        return {id(widget): name for name, widget in self.widgets.items()}

    def collect(self, data: dict[Any, Any]) -> FormResult:
        """Read {component: value} (a handler's input) into a Config, every option by name."""
        names = self.names_by_component()
        by_name = {names[id(c)]: v for c, v in data.items() if id(c) in names}
        result = collect_values(by_name)
        if result.config is not None:
            result.blockers = check_ready(result.config)
        return result

    def values(self, config: Config) -> dict[gr.components.Component, Any]:
        return {widget: option_value(config, name) for name, widget in self.widgets.items()}

    def marks(self, problems: dict[str, str]) -> dict[gr.components.Component, Any]:
        """Every widget: a red frame and the problem as its info text where its value is
        refused, the plain widget with its help text elsewhere."""
        return {
            widget: self.mark(name, problems.get(name)) for name, widget in self.widgets.items()
        }

    def mark_changes(
        self, before: dict[str, str], now: dict[str, str]
    ) -> dict[gr.components.Component, Any]:
        """Only the widgets whose problem appeared, changed or went away (a keystroke sends
        nothing for the others)."""
        return {
            widget: self.mark(name, now.get(name))
            for name, widget in self.widgets.items()
            if before.get(name) != now.get(name)
        }

    def mark(self, name: str, problem: str | None) -> dict[str, Any]:
        if problem is None:
            return gr.update(elem_classes=[], info=self.help[name])
        return gr.update(elem_classes=[INVALID_CLASS], info=PROBLEM_MARK + problem)


def option_value(config: Config, name: str) -> Any:
    """An option's value in `config`, as its widget shows it."""
    info = FIELDS[name]
    return to_widget_value(info, getattr(getattr(config, info.section), name))


def collect_values(values: dict[str, Any]) -> FormResult:
    """Options by name -> Config; each refused value is reported under its name."""
    config = Config()
    errors: dict[str, str] = {}
    for name, value in values.items():
        info = FIELDS[name]
        try:
            set_option(config, name, from_widget_value(info, value), f"[{info.section}] {name}")
        except TiError as error:
            errors[name] = str(error)
    if "resolution" in values and "resolution" not in errors:
        try:  # a rule of its own in config_io; shown at its widget like the others
            parse_resolution(config.dataset.resolution, "[dataset] resolution")
        except TiError as error:
            errors["resolution"] = str(error)
    if not errors:
        try:
            check_combinations(config, "the form")
        except TiError as error:
            errors[""] = str(error)
    return FormResult(None if errors else config, errors)


def check_ready(config: Config) -> dict[str, str]:
    """What stops a run from starting although the config is valid, by option name, found
    without loading anything: the token string, and the paths that must exist here."""
    problems: dict[str, str] = {}
    token = config.token
    if not token.token_string:
        problems["token_string"] = (
            "token_string is empty: set the made-up word your captions use (e.g. mychar4)."
        )
    else:
        problem = preview("", token.token_string, token.num_vectors_per_token).problem
        if problem:
            problems["token_string"] = problem
    model = config.model.pretrained_model_name_or_path.strip()
    if not model:
        problems["pretrained_model_name_or_path"] = (
            "pretrained_model_name_or_path is empty: name a .safetensors/.ckpt file, a "
            "diffusers folder, a hub id, or demo:sd1."
        )
    data = config.dataset
    if not data.dataset_config and not data.train_data_dir and not data.in_json:
        problems["train_data_dir"] = (
            "no images to train on: set train_data_dir (a folder of N_name subfolders) or "
            "dataset_config (an sd-scripts dataset TOML)."
        )
    # resume_from_huggingface: resume names a state on the Hub (the run's preflight checks it)
    remote = {"resume"} if config.saving.resume_from_huggingface else set()
    for name, info in FIELDS.items():  # every path option the run reads (not ones it makes)
        if info.path and not info.made_by_run and name not in problems and name not in remote:
            value = getattr(getattr(config, info.section), name)
            _missing_path(problems, name, value, hub_id_allowed=info.hub_id)
    return problems


def _missing_path(
    problems: dict[str, str], name: str, value: str, hub_id_allowed: bool = False
) -> None:
    """Note `name` when its value names a local file or folder that is not there. Relative
    paths are read from the folder the GUI was started in, as the run reads them."""
    value = (value or "").strip()
    if not value or value.startswith("demo:") or Path(value).expanduser().exists():
        return
    if hub_id_allowed and looks_like_hub_id(value):
        return
    problems[name] = f"{name} = {value}: not found on this computer; check the path."
