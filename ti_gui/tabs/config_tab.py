"""Config tab: load a preset (shipped or the user's own) or any TOML file into the form, save the
form as the user's preset, see the form as TOML and as the equivalent command line, and check a
TOML the way the engine will."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ti_core.config.run_config import Config
from ti_core.config.toml_io import config_from_toml, config_to_command, config_to_toml, load_config
from ti_core.errors import TiError
from ti_gui import presets
from ti_gui.fields import Form, FormResult, check_ready
from ti_gui.path_picker import PATH_FIELDS
from ti_gui.tabs.model_tab import describe_model

PRESETS_DIR = presets.SHIPPED_DIR
DEFAULT_PRESET = "demo"


@dataclass
class ConfigTab:
    preset: gr.Dropdown
    load: gr.Button
    toml: gr.Code
    apply: gr.Button
    check: gr.Button
    status: gr.Markdown
    command: gr.Textbox
    invalid: gr.State  # {option name: problem} shown at the widgets now
    save_name: gr.Textbox
    save: gr.Button
    open_path: gr.Textbox
    open: gr.Button


@dataclass
class FormLoader:
    """Apply TOML and Load preset for other tabs (the Start tab): each returns the updates of
    `outputs`, the TOML editor's and the form's, as the Config tab's own buttons make them."""

    from_text: Callable[[str], dict[Any, Any]]  # a TOML text, into the editor and the form
    from_preset: Callable[[str], dict[Any, Any]]  # a preset by its list name
    outputs: list[Any]


read_preset = presets.read_preset


def initial_config() -> Config:
    """The form starts with the default preset, as the TOML editor does."""
    try:
        return load_config(PRESETS_DIR / f"{DEFAULT_PRESET}.toml")
    except TiError:
        return Config()


def check_config(text: str) -> tuple[str, str]:
    """(status message, command line) for the TOML in the editor, as the engine would judge it."""
    try:
        config = config_from_toml(text, source="the config")
    except TiError as error:
        return f"**Not valid:** {error}", ""
    model = config.model.pretrained_model_name_or_path
    return f"**Valid.** Model: {describe_model(model)}", config_to_command(config)


def build(form: Form) -> ConfigTab:
    with gr.Row():
        preset = gr.Dropdown(
            presets.preset_names(),
            value=DEFAULT_PRESET,
            label="Preset",
            info=f"shipped ones, then yours ({presets.MINE}…, from {presets.user_dir()})",
            elem_id="preset",
        )
        load = gr.Button("Load preset")
    with gr.Row():
        save_name = gr.Textbox(
            label="Save the form as my preset",
            placeholder="a name, e.g. my-character",
            info=f"written to {presets.user_dir()}, listed above; an update never touches it",
            elem_id="preset-name",
        )
        save = gr.Button("Save as preset", elem_id="save-preset")
    with gr.Row():
        open_path = gr.Textbox(
            label="Open a config file",
            placeholder="/path/to/config.toml (ours, or sd-scripts' --config_file TOML)",
            elem_id="open-config-path",
        )
        open_button = gr.Button("Open config", elem_id="open-config")
    toml = gr.Code(
        read_preset(DEFAULT_PRESET), language=None, label="Config (TOML)", lines=18, elem_id="toml"
    )
    with gr.Row():
        apply = gr.Button("Apply TOML to the form")
        check = gr.Button("Check config", variant="primary")
    status = gr.Markdown()
    command = gr.Textbox(
        config_to_command(form.initial),
        label="Equivalent command line",
        buttons=["copy"],
        interactive=False,
    )
    return ConfigTab(
        preset, load, toml, apply, check, status, command, gr.State({}),
        save_name, save, open_path, open_button,
    )  # fmt: skip


def wire(tab: ConfigTab, form: Form, form_status: gr.Markdown) -> FormLoader:
    everything = [tab.status, tab.command, form_status, tab.invalid, *form.outputs()]

    def apply_toml(text: str) -> dict[Any, Any]:
        """Fill every widget from the TOML; a refused TOML changes nothing but the message."""
        try:
            config = config_from_toml(text, source="the config")
        except TiError as error:
            message = f"**Not valid:** {error}"
            return {tab.status: message, form_status: message}
        model = describe_model(config.model.pretrained_model_name_or_path)
        blockers = check_ready(config)
        marks = form.marks(blockers)  # one update per widget: its mark and its new value
        filled = {
            widget: {**marks[widget], "value": value}
            for widget, value in form.values(config).items()
        }
        return {
            **filled,
            tab.invalid: blockers,
            tab.status: f"**Loaded into the form.** Model: {model}",
            tab.command: config_to_command(config),
            form_status: FormResult(config, {}, blockers).message(),
        }

    def form_changed(data: dict[Any, Any]) -> dict[Any, Any]:
        """A widget changed: the TOML and command line follow; refused values are marked at
        their widgets (red frame, the problem as the widget's info text)."""
        result = form.collect(data)
        before = data[tab.invalid] if isinstance(data[tab.invalid], dict) else {}
        now = result.problems()
        out: dict[Any, Any] = form.mark_changes(before, now)
        out[tab.invalid] = now
        out[form_status] = result.message()
        if result.config is not None:
            out[tab.toml] = config_to_toml(result.config)
            out[tab.command] = config_to_command(result.config)
        return out

    tab.load.click(read_preset, inputs=tab.preset, outputs=tab.toml, api_name="read_preset").then(
        apply_toml, inputs=tab.toml, outputs=everything, api_visibility="private"
    )
    tab.apply.click(apply_toml, inputs=tab.toml, outputs=everything, api_visibility="private")

    def from_text(text: str) -> dict[Any, Any]:
        return {tab.toml: text, **apply_toml(text)}

    def from_preset(choice: str) -> dict[Any, Any]:
        return {tab.preset: choice, **from_text(read_preset(choice))}

    def save_preset(name: str, text: str) -> dict[Any, Any]:
        """The editor follows the form, so its TOML is what the form holds."""
        try:
            choice, path = presets.save_preset(name, text)
        except TiError as error:
            return {tab.status: f"**Not saved:** {error}"}
        return {
            tab.status: f"**Saved** as preset `{choice}` in `{path}`.",
            tab.preset: gr.update(choices=presets.preset_names(), value=choice),
        }

    def open_config(path: str) -> dict[Any, Any]:
        try:
            text = presets.open_config_file(path)
        except TiError as error:
            return {tab.status: f"**Not opened:** {error}"}
        return from_text(text)

    tab.save.click(
        save_preset, inputs=[tab.save_name, tab.toml], outputs=[tab.status, tab.preset],
        api_name="save_preset",
    )  # fmt: skip
    tab.open.click(
        open_config, inputs=tab.open_path, outputs=[tab.toml, *everything], api_name="open_config"
    )
    tab.open_path.submit(
        open_config, inputs=tab.open_path, outputs=[tab.toml, *everything],
        api_visibility="private",
    )  # fmt: skip
    tab.check.click(check_config, inputs=tab.toml, outputs=[tab.status, tab.command])
    # Typing fires .input; a path picked with Browse changes the textbox from the server, which
    # fires only .change (path fields listen to that, as typing fires it too).
    triggers = [
        widget.change if name in PATH_FIELDS else widget.input
        for name, widget in form.widgets.items()
    ]
    gr.on(
        triggers,
        form_changed,
        inputs=form.inputs() | {tab.invalid},
        outputs=[tab.toml, *everything],
        api_visibility="private",
        show_progress="hidden",
        trigger_mode="always_last",
    )
    return FormLoader(from_text, from_preset, [tab.toml, tab.preset, *everything])
