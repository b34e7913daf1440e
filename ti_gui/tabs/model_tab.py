"""Model tab: the base model and how to read it; shows the family detected from the file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from ti_core.errors import TiError
from ti_core.models.checkpoint_info import classify_keys, folder_info, read_safetensors_header
from ti_gui.fields import Form
from ti_gui.path_picker import add_path_field, add_rest


@dataclass
class ModelTab:
    detected: gr.Markdown


def describe_model(name: str) -> str:
    """What the model path is, without loading it (the GUI process never loads torch)."""
    name = (name or "").strip()
    if not name:
        return "none set (pretrained_model_name_or_path is empty)"
    if name.startswith("demo:"):
        return f"the built-in tiny demo model ({name[5:]}), built on first use"
    path = Path(name).expanduser()
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
    if path.suffix in (".safetensors", ".ckpt") or "/" not in name:
        return f"`{name}` is not a file here: check the path"
    return f"`{name}` (not a local file or folder: taken as a hub id)"


def show_detected(name: str) -> str:
    return f"**Detected:** {describe_model(name)}"


def build(form: Form) -> ModelTab:
    add_path_field(form, "pretrained_model_name_or_path")
    detected = gr.Markdown(
        show_detected(str(form.initial.model.pretrained_model_name_or_path)),
        elem_id="model-detected",
    )
    with gr.Row():
        form.add("v2")
        form.add("v_parameterization")
        form.add("clip_skip")
    add_path_field(form, "vae")
    with gr.Accordion("More model options", open=False):
        add_rest(form, "model")
    return ModelTab(detected)


def wire(tab: ModelTab, form: Form) -> None:
    form["pretrained_model_name_or_path"].change(
        show_detected,
        inputs=form["pretrained_model_name_or_path"],
        outputs=tab.detected,
        api_visibility="private",
    )
