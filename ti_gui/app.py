"""Builds the Gradio page: the run bar (Train / Stop and the run's progress, on every tab),
tabs that edit ONE config (bound to its options by name, see fields.py), the Config tab's TOML
and command line, and the Run tab (supervisor.py)."""

from __future__ import annotations

import atexit

import gradio as gr

from ti_gui import run_bar, sample_grid
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
    start_tab,
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
/* the Dataset tab's gallery (dataset_gallery.py) */
.ti-gallery {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(120px, 1fr));
              gap: 8px; }}
.ti-card {{ display: flex; flex-direction: column; gap: 2px; padding: 4px; text-align: left;
           border: 1px solid var(--border-color-primary); border-radius: 6px; cursor: pointer;
           background: none; font: inherit; color: inherit; }}
.ti-card:hover, .ti-card:focus-visible {{ border-color: var(--color-accent); }}
.ti-card img, .ti-no-image {{ width: 100%; aspect-ratio: 1; object-fit: contain;
                             background: var(--background-fill-secondary); border-radius: 4px; }}
.ti-no-image {{ display: flex; align-items: center; justify-content: center; }}
.ti-card-name {{ font-size: 12px; font-weight: bold; overflow-wrap: anywhere; }}
.ti-card-facts {{ font-size: 11px; color: var(--body-text-color-subdued); }}
.ti-card-caption {{ font-size: 12px; line-height: 1.4; overflow-wrap: anywhere; overflow: hidden;
                   display: -webkit-box; -webkit-line-clamp: 4; -webkit-box-orient: vertical; }}
.ti-card .ti-new {{ padding: 0 3px; }}
.ti-missing, .ti-muted {{ font-style: italic; opacity: 0.7; }}
.ti-badge {{ font-size: 11px; color: #d33; font-weight: bold; }}
/* clip, not hidden: the same look, but no scroll box, so the gallery's editor can stick */
.gradio-container {{ overflow: clip; }}
#gallery-editor {{ position: sticky; top: 8px; align-self: flex-start; }}
#gallery-image img {{ width: 100%; height: 100%; object-fit: contain; }}
"""


def build_app() -> gr.Blocks:
    form = Form(config_tab.initial_config())
    with gr.Blocks(title=TITLE) as app:
        gr.Markdown(
            f"# {TITLE}\n"
            "Train Textual Inversion embeddings for Stable Diffusion 1.x, 2.x and SDXL. "
            "Begin on **Start** (the demo, your images, or a pasted sd-scripts command), or fill "
            "the tabs; then press **Train**: the bar below follows the run from any tab, **Run** "
            "shows its detail."
        )
        bar = run_bar.build(TITLE)
        form_status = bar.form_status
        with gr.Tab("Start", elem_id="start-tab"):  # first: where a fresh user lands
            start = start_tab.build()
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
        with gr.Tab("Config (TOML)", elem_id="config-tab"):  # the advanced view of the form
            config = config_tab.build(form)
        loader = config_tab.wire(config, form, form_status)
        model_tab.wire(model, form)
        dataset_tab.wire(dataset, form)
        token_tab.wire(token, form)
        training_tab.wire(form)
        sampling_tab.wire(sampling, form)
        train = run_bar.wire(bar, form, sampling.prompts, run_tab.runs_root, run_tab.shown, TITLE)
        start_tab.wire(start, form, loader, train)
        run.wire(run_tab, bar, app)
        generate_tab.wire(generate, run_tab.runs_root, app)
        sample_grid.wire(run_tab.grid, run_tab.shown, generate)  # a grid cell opens Generate
    app.ti_form = form  # tests look the widgets up by option name
    atexit.register(SUPERVISOR.shutdown)
    atexit.register(CLIENT.shutdown)
    return app
