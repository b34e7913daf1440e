"""Config tab: load a preset or any TOML, check it the way the engine will, see the command line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from ti_core.checkpoint_info import classify_keys, folder_info, read_safetensors_header
from ti_core.config_io import config_from_toml, config_to_command
from ti_core.errors import TiError

PRESETS_DIR = Path(__file__).resolve().parents[2] / "presets"
DEFAULT_PRESET = "demo"


@dataclass
class ConfigTab:
    preset: gr.Dropdown
    load: gr.Button
    toml: gr.Code
    check: gr.Button
    status: gr.Markdown
    command: gr.Textbox


def preset_names() -> list[str]:
    return sorted(path.stem for path in PRESETS_DIR.glob("*.toml"))


def read_preset(name: str) -> str:
    path = PRESETS_DIR / f"{name}.toml"
    if not path.is_file():
        return f"# preset {name!r} not found in {PRESETS_DIR}\n"
    return path.read_text(encoding="utf-8")


def check_config(text: str) -> tuple[str, str]:
    """(status message, command line) for the TOML in the editor, as the engine would judge it."""
    try:
        config = config_from_toml(text, source="the config")
    except TiError as error:
        return f"**Not valid:** {error}", ""
    model = config.model.pretrained_model_name_or_path
    return f"**Valid.** Model: {describe_model(model)}", config_to_command(config)


def describe_model(name: str) -> str:
    """What the model path is, without loading it (the GUI process never loads torch)."""
    if not name:
        return "none set (pretrained_model_name_or_path is empty)"
    if name.startswith("demo:"):
        return f"the built-in tiny demo model ({name[5:]}), built on first use"
    path = Path(name)
    try:
        if path.is_dir():
            return f"{folder_info(path).describe()} (diffusers folder)"
        if path.suffix == ".safetensors":
            keys, metadata = read_safetensors_header(path)
            return f"{classify_keys(path, keys, metadata).describe()} (single file)"
    except TiError as error:
        return f"problem: {error}"
    if path.is_file():
        return "a pickled checkpoint; its family is detected when the run loads it"
    return f"{name} (not a local file or folder: taken as a hub id)"


def build() -> ConfigTab:
    with gr.Row():
        preset = gr.Dropdown(
            preset_names(),
            value=DEFAULT_PRESET,
            label="Preset",
            info=f"from {PRESETS_DIR}",
        )
        load = gr.Button("Load preset")
    toml = gr.Code(read_preset(DEFAULT_PRESET), language=None, label="Config (TOML)", lines=18)
    check = gr.Button("Check config", variant="primary")
    status = gr.Markdown()
    command = gr.Textbox(label="Equivalent command line", buttons=["copy"], interactive=False)
    return ConfigTab(preset, load, toml, check, status, command)


def wire(tab: ConfigTab) -> None:
    tab.load.click(read_preset, inputs=tab.preset, outputs=tab.toml)
    tab.check.click(check_config, inputs=tab.toml, outputs=[tab.status, tab.command])
