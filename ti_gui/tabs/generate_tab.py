"""Generate tab: try embeddings on a base model through the generation worker (one loaded
pipeline, kept between clicks), with the live token preview, a gallery captioned with each
image's settings, and the checkpoint grid and embedding inspector (embedding_tools_tab.py).
What it shows and sends is built in ti_gui/generate_view.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from ti_core.generation.options import GRID_OPTIONS, OPTIONS
from ti_gui.fields import Form, make_widget
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
EMBEDDING_COLUMNS = ["trigger", "vectors", "format", "file"]
# How a widget's label differs from its option's name.
LABELS = {"prompt": "Prompt", "negative_prompt": "Negative prompt", "scale": "CFG scale"}
LABELS |= {"batch_count": "batch count", "batch_size": "batch size"}


class OptionWidgets:
    """A widget per generation option (ti_core.generation.options.GenerateOptions), made from
    its declaration and bound by name, as ti_gui.fields.Form does for the run config."""

    def __init__(self) -> None:
        self.widgets: dict[str, gr.components.Component] = {}

    def add(self, name: str, **overrides: Any) -> gr.components.Component:
        info = OPTIONS[name]
        looks = {"label": LABELS.get(name, name), "elem_id": "generate-" + name.replace("_", "-")}
        looks |= overrides
        if info.type is str and info.choices is None:  # a prompt: no one-line limit
            value = looks.pop("value", info.default)
            widget = gr.Textbox(value, **{"lines": 1, "info": info.help, **looks})
        else:  # the help text as its info, like every config widget
            widget = make_widget(info, **looks)
        self.widgets[name] = widget
        return widget

    def add_rest(self) -> list[gr.components.Component]:
        """Widgets for the options not placed yet: a new option shows up by itself."""
        return [self.add(name) for name in OPTIONS if name not in self.widgets]

    def __getitem__(self, name: str) -> gr.components.Component:
        return self.widgets[name]

    def inputs(self) -> set[gr.components.Component]:
        return set(self.widgets.values())

    def values(self, data: dict[Any, Any]) -> dict[str, Any]:
        """{option name: value} from a handler's {component: value}."""
        return {name: data[widget] for name, widget in self.widgets.items()}


@dataclass(kw_only=True)
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
    options: OptionWidgets  # prompt, steps, sampler, ...: one per GenerateOptions field
    preview: gr.HTML
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
    options = OptionWidgets()
    options.add("prompt", lines=2)
    options.add("negative_prompt")
    preview = gr.HTML(render_prompt_preview("", [], 75), label="Token preview")
    with gr.Row():
        for name in ("width", "height", "steps", "scale", "seed"):
            options.add(name)
    with gr.Row():
        options.add("batch_count")
        options.add("batch_size")
        options.add("sampler", value=form.initial.sampling.sample_sampler)
        options.add("clip_skip", value=start.clip_skip)
        options.add("max_token_length", value=start.max_token_length)
        options.add_rest()
    generate_button = gr.Button("Generate", variant="primary", elem_id="generate-button")
    messages = gr.Markdown(elem_id="generate-messages")
    gallery = gr.Gallery(
        label="Generated", columns=4, height=420, interactive=False, elem_id="generate-gallery"
    )
    tools = embedding_tools_tab.build(start.embedding)
    return GenerateTab(
        model=model, v2=v2, v_parameterization=v_parameterization, vae=vae, load=load,
        model_status=model_status, embeddings=embeddings, embedding_path=embedding_path,
        embedding_trigger=embedding_trigger, add=add, remove_choice=remove_choice,
        remove=remove, options=options, preview=preview, generate=generate_button,
        messages=messages, gallery=gallery, shown=gr.State([]), tools=tools,
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
        values = generate_options(tab.options.values(data))
        items, text = generate(CLIENT, generated_folder(data[runs_root]), **values)
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

    preview_inputs = [tab.options["prompt"], tab.options["max_token_length"]]
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
    inputs = tab.options.inputs()
    inputs |= {tab.model, tab.v2, tab.v_parameterization, tab.vae, tab.embedding_path}
    inputs |= {tab.shown, runs_root}
    tab.generate.click(
        on_generate, inputs=inputs, outputs=[*listing, tab.messages, tab.shown, tab.gallery],
        **private,
    ).then(**after)  # fmt: skip
    gr.on(
        [widget.change for widget in preview_inputs], on_preview, inputs=preview_inputs,
        outputs=tab.preview, show_progress="hidden", trigger_mode="always_last", **private,
    )  # fmt: skip
    app.load(
        on_page_load, inputs=runs_root,
        outputs=[*listing, tab.model, tab.v2, tab.v_parameterization, tab.vae,
                 tab.embedding_path],
        **private,
    )  # fmt: skip
    grid_made = embedding_tools_tab.wire(
        tab.tools, runs_root, tab.model, {name: tab.options[name] for name in GRID_OPTIONS}, app
    )
    grid_made.then(
        lambda: show_state(CLIENT.state) or {tab.model_status: model_markdown({})},
        outputs=listing, **private,
    )  # fmt: skip
