"""Generate tab: try embeddings on a base model through the generation worker (one loaded
pipeline, kept between clicks), with the live token preview, a gallery captioned with each
image's settings, and the checkpoint grid and embedding inspector (embedding_tools_tab.py).
What it shows and sends is built in ti_gui/generate_view.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from ti_core.config import FIELDS
from ti_core.token_preview import TOKEN_BUDGETS
from ti_gui.fields import Form
from ti_gui.generate_view import (
    add_embedding,
    embedding_rows,
    gallery_images,
    generate,
    generate_options,
    generated_folder,
    load_model,
    model_markdown,
    remove_embedding,
    render_prompt_preview,
    run_defaults,
)
from ti_gui.generation_client import CLIENT
from ti_gui.tabs import embedding_tools_tab
from ti_gui.tabs.run import default_runs_root

MAX_SHOWN = 24  # gallery: the newest images
SAMPLERS = list(FIELDS["sample_sampler"].choices or ("ddim",))
EMBEDDING_COLUMNS = ["trigger", "vectors", "format", "file"]


@dataclass
class GenerateTab:
    model: gr.Textbox
    v2: gr.Checkbox
    v_parameterization: gr.Checkbox
    vae: gr.Textbox
    load: gr.Button
    model_status: gr.Markdown
    embeddings: gr.Dataframe
    embedding_path: gr.Textbox
    embedding_trigger: gr.Textbox
    add: gr.Button
    remove_choice: gr.Dropdown
    remove: gr.Button
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    preview: gr.HTML
    width: gr.Number
    height: gr.Number
    steps: gr.Number
    scale: gr.Number
    seed: gr.Number
    batch_count: gr.Number
    batch_size: gr.Number
    sampler: gr.Dropdown
    clip_skip: gr.Number
    max_token_length: gr.Dropdown
    generate: gr.Button
    messages: gr.Markdown
    gallery: gr.Gallery
    shown: gr.State  # per page: (path, caption) of the images in the gallery, newest first
    tools: embedding_tools_tab.ToolsTab


# ---- the widgets ----------------------------------------------------------------------------


def build(form: Form) -> GenerateTab:
    runs_root = default_runs_root(form)
    start = run_defaults(runs_root, form.initial.model.pretrained_model_name_or_path)
    with gr.Row():
        model = gr.Textbox(
            start.model, label="Base model", scale=4, elem_id="generate-model",
            info="A diffusers folder, a .safetensors/.ckpt file, or demo:sd1/sd2/sdxl. "
            "Starts as the model the newest run trained on.",
        )  # fmt: skip
        v2 = gr.Checkbox(start.v2, label="v2", info="SD 2.x (detected from a file)")
        v_parameterization = gr.Checkbox(
            start.v_parameterization, label="v_parameterization", info="768-v models"
        )
        vae = gr.Textbox(start.vae, label="VAE", info="Optional: a separate VAE file or folder.")
        load = gr.Button("Load model", elem_id="generate-load")
    model_status = gr.Markdown(model_markdown({}), elem_id="generate-model-status")
    with gr.Accordion("Embeddings", open=True):
        embeddings = gr.Dataframe(
            value=[], headers=EMBEDDING_COLUMNS, label="Loaded embeddings", interactive=False,
            elem_id="generate-embeddings",
        )  # fmt: skip
        with gr.Row():
            embedding_path = gr.Textbox(
                start.embedding, label="Embedding file", scale=4,
                info="Any trainer's file (kohya/A1111/diffusers). Starts as the newest run's.",
            )  # fmt: skip
            embedding_trigger = gr.Textbox(
                "", label="Trigger word", info="Empty: the name the file gives."
            )
            add = gr.Button("Add embedding")
        with gr.Row():
            remove_choice = gr.Dropdown([], label="Loaded embedding", allow_custom_value=True)
            remove = gr.Button("Remove embedding")
    prompt = gr.Textbox(label="Prompt", lines=2, elem_id="generate-prompt")
    negative_prompt = gr.Textbox(label="Negative prompt", lines=1)
    preview = gr.HTML(render_prompt_preview("", [], 75), label="Token preview")
    with gr.Row():
        width = gr.Number(512, label="width", precision=0, minimum=64, elem_id="generate-width")
        height = gr.Number(512, label="height", precision=0, minimum=64, elem_id="generate-height")
        steps = gr.Number(
            30, label="steps", precision=0, minimum=1, maximum=500, elem_id="generate-steps"
        )
        scale = gr.Number(7.5, label="CFG scale", minimum=0)
        seed = gr.Number(-1, label="seed", precision=0, info="-1: random")
    with gr.Row():
        batch_count = gr.Number(1, label="batch count", precision=0, minimum=1)
        batch_size = gr.Number(1, label="batch size", precision=0, minimum=1)
        sampler = gr.Dropdown(
            SAMPLERS, value=form.initial.sampling.sample_sampler or "ddim", label="sampler"
        )
        clip_skip = gr.Number(start.clip_skip, label="clip_skip", precision=0, minimum=1)
        max_token_length = gr.Dropdown(
            list(TOKEN_BUDGETS), value=start.max_token_length, label="max_token_length"
        )
    generate_button = gr.Button("Generate", variant="primary", elem_id="generate-button")
    messages = gr.Markdown(elem_id="generate-messages")
    gallery = gr.Gallery(
        label="Generated", columns=4, height=420, interactive=False, elem_id="generate-gallery"
    )
    tools = embedding_tools_tab.build(start.embedding)
    return GenerateTab(
        model, v2, v_parameterization, vae, load, model_status, embeddings, embedding_path,
        embedding_trigger, add, remove_choice, remove, prompt, negative_prompt, preview, width,
        height, steps, scale, seed, batch_count, batch_size, sampler, clip_skip,
        max_token_length, generate_button, messages, gallery, gr.State([]), tools,
    )  # fmt: skip


def wire(tab: GenerateTab, runs_root: gr.Textbox, app: gr.Blocks) -> None:
    private = {"api_visibility": "private"}
    listing = [tab.model_status, tab.embeddings, tab.remove_choice]

    def show_state(state: dict[str, Any]) -> dict[Any, Any]:
        """The loaded model and embeddings (unchanged when `state` is empty: a failure)."""
        if not state:
            return {}
        triggers = [e["trigger"] for e in state.get("embeddings", [])]
        return {
            tab.model_status: model_markdown(state),
            tab.embeddings: embedding_rows(state.get("embeddings", [])),
            tab.remove_choice: gr.update(choices=triggers, value=triggers[0] if triggers else None),
        }

    def on_load(model: str, v2: bool, v_param: bool, vae: str, first: str) -> dict[Any, Any]:
        state, text = load_model(CLIENT, model, v2, v_param, vae, first_embedding=first)
        return {**show_state(state), tab.messages: text}

    def on_add(path: str, trigger: str) -> dict[Any, Any]:
        if CLIENT.model_request is None:
            return {tab.messages: "Load a model first: the embedding must fit its text encoders."}
        state, text = add_embedding(CLIENT, path, trigger)
        return {**show_state(state), tab.messages: text}

    def on_remove(trigger: str) -> dict[Any, Any]:
        state, text = remove_embedding(CLIENT, trigger)
        return {**show_state(state), tab.messages: text}

    def on_generate(data: dict[Any, Any]) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        loaded = ""
        if CLIENT.model_request is None:  # Generate alone is enough: load what the boxes say
            state, loaded = load_model(
                CLIENT, data[tab.model], data[tab.v2], data[tab.v_parameterization],
                data[tab.vae], first_embedding=data[tab.embedding_path],
            )  # fmt: skip
            if not state:
                return {tab.messages: loaded}
            out.update(show_state(state))
        values = {name: data[getattr(tab, name)] for name in GENERATE_WIDGETS}
        items, text = generate(
            CLIENT, generated_folder(data[runs_root]), **generate_options(values)
        )
        shown = (items + list(data[tab.shown]))[:MAX_SHOWN]
        out[tab.messages] = "\n\n".join(m for m in (loaded, text) if m) or (
            f"Saved {len(items)} image(s) in `{generated_folder(data[runs_root])}`."
        )
        if items:
            out[tab.shown] = shown
            out[tab.gallery] = gallery_images(shown)
        return out

    def on_preview(prompt: str, budget: Any) -> str:
        return render_prompt_preview(prompt, CLIENT.embeddings, budget)

    def on_page_load(root: str) -> dict[Any, Any]:
        """A reloaded page shows what the worker holds; else the newest run's defaults."""
        if CLIENT.model_request is not None and CLIENT.state:
            loaded = CLIENT.model_request
            return {
                **show_state(CLIENT.state), tab.model: loaded.get("model", ""),
                tab.v2: bool(loaded.get("v2")),
                tab.v_parameterization: bool(loaded.get("v_parameterization")),
                tab.vae: loaded.get("vae", ""),
            }  # fmt: skip
        defaults = run_defaults(root, "")
        if not defaults.model:  # nothing to change (an empty dict would be one output value)
            return {tab.model_status: model_markdown({})}
        return {
            tab.model: defaults.model, tab.v2: defaults.v2,
            tab.v_parameterization: defaults.v_parameterization, tab.vae: defaults.vae,
            tab.embedding_path: defaults.embedding,
        }  # fmt: skip

    preview_inputs = [tab.prompt, tab.max_token_length]
    after = {"fn": on_preview, "inputs": preview_inputs, "outputs": tab.preview, **private}
    tab.load.click(
        on_load,
        inputs=[tab.model, tab.v2, tab.v_parameterization, tab.vae, tab.embedding_path],
        outputs=[*listing, tab.messages], **private,
    ).then(**after)  # fmt: skip
    tab.add.click(
        on_add, inputs=[tab.embedding_path, tab.embedding_trigger],
        outputs=[*listing, tab.messages], **private,
    ).then(**after)  # fmt: skip
    tab.remove.click(
        on_remove, inputs=tab.remove_choice, outputs=[*listing, tab.messages], **private
    ).then(**after)
    inputs = {getattr(tab, name) for name in GENERATE_WIDGETS}
    inputs |= {tab.model, tab.v2, tab.v_parameterization, tab.vae, tab.embedding_path}
    inputs |= {tab.shown, runs_root}
    tab.generate.click(
        on_generate, inputs=inputs, outputs=[*listing, tab.messages, tab.shown, tab.gallery],
        **private,
    ).then(**after)  # fmt: skip
    gr.on(
        [tab.prompt.change, tab.max_token_length.change], on_preview, inputs=preview_inputs,
        outputs=tab.preview, show_progress="hidden", trigger_mode="always_last", **private,
    )  # fmt: skip
    app.load(
        on_page_load, inputs=runs_root,
        outputs=[*listing, tab.model, tab.v2, tab.v_parameterization, tab.vae,
                 tab.embedding_path],
        **private,
    )  # fmt: skip
    settings = ("negative_prompt", "width", "height", "steps", "scale", "sampler", "clip_skip")
    grid_made = embedding_tools_tab.wire(
        tab.tools, runs_root, tab.model, {name: getattr(tab, name) for name in settings}, app
    )
    grid_made.then(
        lambda: show_state(CLIENT.state) or {tab.model_status: model_markdown({})},
        outputs=listing, **private,
    )  # fmt: skip


GENERATE_WIDGETS = (
    "prompt", "negative_prompt", "width", "height", "steps", "scale", "seed", "batch_count",
    "batch_size", "sampler", "clip_skip", "max_token_length",
)  # fmt: skip
