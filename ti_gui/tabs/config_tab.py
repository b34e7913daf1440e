"""Config tab: load a preset or any TOML into the form, see the form as TOML and as the
equivalent command line, and check a TOML the way the engine will."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from ti_core.config.run_config import Config
from ti_core.config.toml_io import config_from_toml, config_to_command, config_to_toml, load_config
from ti_core.errors import TiError
from ti_gui.fields import Form, FormResult, check_ready
from ti_gui.path_picker import PATH_FIELDS
from ti_gui.tabs.model_tab import describe_model

PRESETS_DIR = Path(__file__).resolve().parents[2] / "presets"
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


def preset_names() -> list[str]:
    return sorted(path.stem for path in PRESETS_DIR.glob("*.toml"))


def read_preset(name: str) -> str:
    path = PRESETS_DIR / f"{name}.toml"
    if not path.is_file():
        return f"# preset {name!r} not found in {PRESETS_DIR}\n"
    return path.read_text(encoding="utf-8")


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
            preset_names(),
            value=DEFAULT_PRESET,
            label="Preset",
            info=f"from {PRESETS_DIR}",
        )
        load = gr.Button("Load preset")
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
    return ConfigTab(preset, load, toml, apply, check, status, command, gr.State({}))


def wire(tab: ConfigTab, form: Form, form_status: gr.Markdown) -> None:
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
        return {
            **form.values(config),
            **form.marks(blockers),
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
