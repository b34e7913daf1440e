"""Builds the Gradio page from the tab modules (each has build() and wire())."""

from __future__ import annotations

import gradio as gr

from ti_gui.tabs import config_tab

TITLE = "Textual Inversion trainer"


def build_app() -> gr.Blocks:
    with gr.Blocks(title=TITLE) as app:
        gr.Markdown(
            f"# {TITLE}\n"
            "Train Textual Inversion embeddings for Stable Diffusion 1.x, 2.x and SDXL. "
            "This version edits and checks run configs; training from the GUI comes next."
        )
        with gr.Tab("Config"):
            config_tab.wire(config_tab.build())
    return app
