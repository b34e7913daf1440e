"""One widget per config option, bound by name: build it from the option's FieldInfo, read the
widgets back into a Config (errors per field, never a traceback), and fill them from a Config.

Tabs call `form.add(name)` / `form.add_rest(section)`; events take `form.inputs()` (a set, so
handlers receive {component: value}) and return `form.values(config)` (a {component: value}).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gradio as gr

from ti_core.config import FIELDS, Config, FieldInfo
from ti_core.config_io import check_combinations, parse_resolution, set_option
from ti_core.errors import TiError

INVALID_CLASS = "ti-invalid"  # marks a widget whose value the config refuses (see app.CSS)


def field_label(info: FieldInfo) -> str:
    return info.name


def field_info_text(info: FieldInfo) -> str:
    if info.planned:
        return f"{info.help} Not available yet (comes with {info.planned})."
    return info.help


def make_widget(info: FieldInfo, **overrides: Any) -> gr.components.Component:
    """The widget for one option: Checkbox (bool), Dropdown (choices), Number (int/float with
    its limits), Textbox otherwise. A planned option is shown but cannot be changed."""
    common: dict[str, Any] = {
        "label": field_label(info),
        "info": field_info_text(info),
        "elem_id": f"field-{info.name}",
        "interactive": not info.planned,
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

    def message(self) -> str:
        if not self.errors:
            return "**Valid.**"
        lines = [f"- {message}" for message in self.errors.values()]
        return "**Not valid:**\n" + "\n".join(lines)


class Form:
    """The widgets of every tab, by option name."""

    def __init__(self, initial: Config | None = None) -> None:
        self.initial = initial or Config()  # the values the widgets start with
        self.widgets: dict[str, gr.components.Component] = {}

    def add(self, name: str, **overrides: Any) -> gr.components.Component:
        if name in self.widgets:
            raise ValueError(f"option {name!r} has a widget already")
        info = FIELDS[name]
        start = getattr(getattr(self.initial, info.section), name)
        widget = make_widget(info, value=to_widget_value(info, start), **overrides)
        self.widgets[name] = widget
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
        return collect_values(by_name)

    def values(self, config: Config) -> dict[gr.components.Component, Any]:
        return {widget: option_value(config, name) for name, widget in self.widgets.items()}

    def marks(self, errors: dict[str, str]) -> dict[gr.components.Component, Any]:
        """Red frames on the widgets whose values are refused, none on the others."""
        return {
            widget: gr.update(elem_classes=[INVALID_CLASS] if name in errors else [])
            for name, widget in self.widgets.items()
        }


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
        if info.planned:
            continue  # shown, never set: the engine refuses anything but the default
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
