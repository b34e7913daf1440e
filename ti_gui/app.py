"""Builds the Gradio page: the run bar (Train / Stop and the run's progress, on every tab),
tabs that edit ONE config (bound to its options by name, see fields.py), the Config tab's TOML
and command line, and the Run tab (supervisor.py)."""

from __future__ import annotations

import atexit

import gradio as gr

from ti_gui import run_bar
from ti_gui.fields import INVALID_CLASS, Form
from ti_gui.generation_client import CLIENT
from ti_gui.supervisor import SUPERVISOR
from ti_gui.tabs import (
    config_tab,
    dataset_tab,
    generate_tab,
    model_tab,
    run,
    sampling_tab,
    token_tab,
    training_tab,
)

TITLE = "Textual Inversion trainer"
CSS = f"""
.{INVALID_CLASS} {{ outline: 2px solid #d33; border-radius: 6px; }}
.{INVALID_CLASS} [data-testid="block-info"] {{ color: #d33; }}
.ti-tokens {{ display: flex; flex-wrap: wrap; gap: 4px; }}
.ti-piece, .ti-new {{ padding: 2px 6px; border-radius: 4px; background: #8882; }}
.ti-new {{ background: #f9a825; color: #000; font-weight: bold; }}
.ti-problem {{ color: #d33; }}
progress {{ width: 100%; }}
#run-bar {{ padding: 6px 8px; }}
#run-bar-status p, #form-status p, #form-status li {{ margin: 0; }}
#run-bar-status progress {{ height: 8px; margin-top: 4px; }}
#run-title {{ display: none; }}
"""


def build_app() -> gr.Blocks:
    form = Form(config_tab.initial_config())
    with gr.Blocks(title=TITLE) as app:
        gr.Markdown(
            f"# {TITLE}\n"
            "Train Textual Inversion embeddings for Stable Diffusion 1.x, 2.x and SDXL. "
            "Fill the tabs (or load a preset in **Config**), then press **Train**: the bar below "
            "follows the run from any tab, **Run** shows its detail."
        )
        bar = run_bar.build(TITLE)
        form_status = bar.form_status
        with gr.Tab("Config"):
            config = config_tab.build(form)
        with gr.Tab("Model"):
            model = model_tab.build(form)
        with gr.Tab("Dataset"):
            dataset = dataset_tab.build(form)
        with gr.Tab("Token"):
            token = token_tab.build(form)
        with gr.Tab("Training"):
            training_tab.build(form)
        with gr.Tab("Sampling & saving"):
            sampling = sampling_tab.build(form)
        with gr.Tab("Run", elem_id="run-tab"):
            run_tab = run.build(form)
        with gr.Tab("Generate", elem_id="generate-tab"):
            generate = generate_tab.build(form)
        config_tab.wire(config, form, form_status)
        model_tab.wire(model, form)
        dataset_tab.wire(dataset, form)
        token_tab.wire(token, form)
        training_tab.wire(form)
        sampling_tab.wire(sampling, form)
        run_bar.wire(bar, form, sampling.prompts, run_tab.runs_root, run_tab.shown, TITLE)
        run.wire(run_tab, bar, app)
        generate_tab.wire(generate, run_tab.runs_root, app)
    app.ti_form = form  # tests look the widgets up by option name
    atexit.register(SUPERVISOR.shutdown)
    atexit.register(CLIENT.shutdown)
    return app
