"""Sampling & saving tab: sample images during the run, and what is saved where."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from ti_gui.fields import Form
from ti_gui.path_picker import add_path_field, add_rest


@dataclass
class SamplingTab:
    prompts: gr.Textbox  # not a config option: written into the run folder on Train


def build(form: Form) -> SamplingTab:
    with gr.Row():
        add_path_field(form, "output_dir")
        form.add("output_name")
    with gr.Row():
        form.add("save_every_n_steps")
        form.add("save_every_n_epochs")
        form.add("embedding_format")
        form.add("save_model_as")
    with gr.Accordion("More saving options", open=False):
        add_path_field(form, "resume")
        add_rest(form, "saving")
    prompts = gr.Textbox(
        "",
        lines=3,
        label="Sample prompts",
        info="One prompt per line (sd-scripts options such as --s 20 --l 7 allowed). Written to "
        "the run folder as sample_prompts.txt on Train, replacing sample_prompts below.",
        elem_id="sample-prompts-text",
    )
    with gr.Row():
        form.add("sample_every_n_steps")
        form.add("sample_every_n_epochs")
        form.add("sample_at_first")
        form.add("sample_sampler")
    add_path_field(form, "sample_prompts")
    add_rest(form, "sampling")
    return SamplingTab(prompts)


def wire(tab: SamplingTab, form: Form) -> None:
    """Every option widget is wired in app.py; the prompts go with Train (tabs/run.py)."""
