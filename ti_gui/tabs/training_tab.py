"""Training tab: steps, precision, memory savers, the optimizer and its learning rate."""

from __future__ import annotations

import gradio as gr

from ti_gui.fields import Form
from ti_gui.path_picker import add_rest


def build(form: Form) -> None:
    with gr.Row():
        form.add("max_train_steps")
        form.add("max_train_epochs")
        form.add("seed")
    with gr.Row():
        form.add("mixed_precision")
        form.add("gradient_checkpointing")
        form.add("gradient_accumulation_steps")
    with gr.Row():
        form.add("optimizer_type")
        form.add("learning_rate")
        form.add("lr_scheduler")
        form.add("lr_warmup_steps")
    with gr.Accordion("More training and optimizer options", open=False):
        add_rest(form, "optimizer")
        add_rest(form, "training")


def wire(form: Form) -> None:
    """Every widget here is a config option: app.py wires them all together."""
