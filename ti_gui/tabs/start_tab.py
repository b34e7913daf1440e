"""Start tab, where a fresh user lands: try the demo (one click: the demo preset, then Train),
train on my images (a model and an image folder pick the matching preset; the dataset doctor
runs), or paste an sd-scripts command line or TOML (ti_core.config.command_line)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import tomli_w

from ti_core.atomic import write_text_atomic
from ti_core.config.command_line import config_from_paste
from ti_core.config.run_config import Config
from ti_core.config.toml_io import check_combinations, config_from_toml, config_to_toml, set_option
from ti_core.data.images import is_image_file
from ti_core.data.sources import parse_folder_name
from ti_core.errors import ConfigError, DatasetError, TiError
from ti_core.models.checkpoint_info import (
    FAMILIES,
    FAMILY_NAMES,
    classify_keys,
    folder_info,
    looks_like_hub_id,
    read_safetensors_header,
)
from ti_gui import presets
from ti_gui.fields import Form
from ti_gui.path_picker import PATH_FIELDS, PathPicker
from ti_gui.path_picker import wire as wire_picker
from ti_gui.run_bar import TrainStart
from ti_gui.tabs.config_tab import FormLoader, read_preset
from ti_gui.tabs.dataset_tab import report_markdown, run_doctor

DEMO_PRESET = "demo"
FAMILY_PRESETS = {"sd1": "sd15_character", "sd2": "sd2_768v", "sdxl": "sdxl"}
# ti_core.models.demo.MARKER_FILE, the file a built demo holds beside its model (that module
# needs torch, which the GUI never imports; a test checks the two agree).
DEMO_MARKER = "demo.json"

PASTE_EXAMPLE = (
    "accelerate launch --num_cpu_threads_per_process 1 \\\n"
    "  train_textual_inversion.py \\\n"
    "  --pretrained_model_name_or_path=model.safetensors \\\n"
    "  --dataset_config=mychar.toml \\\n"
    "  --token_string=mychar4 --init_word=cute ..."
)


@dataclass(frozen=True)
class ModelChoice:
    name: str  # as the form's pretrained_model_name_or_path takes it
    family: str  # one of FAMILIES
    v_parameterization: bool | None  # None: the file does not say
    preset: str
    description: str  # what it is, in words


@dataclass
class ImagesChoice:
    config: Config
    preset: str
    model: str  # the model, in words
    images: str  # how the image folder is read, in words


def model_choice(name: str) -> ModelChoice:
    """The model's family, read without torch, and the preset for it; the demo's own files
    (and demo:FAMILY) get the demo preset: its resolution is the demo images' 64 px."""
    name = (name or "").strip().strip('"')
    if not name:
        raise ConfigError("Pick the base model first (a .safetensors file, a folder or demo:sd1).")
    if name.startswith("demo:"):
        family = name.removeprefix("demo:")
        if family not in FAMILIES:
            raise ConfigError(f"{name}: unknown demo; use demo:sd1, demo:sd2 or demo:sdxl.")
        return ModelChoice(name, family, None, DEMO_PRESET, f"the built-in demo model ({family})")
    path = Path(name).expanduser()
    if path.is_dir() or (path.is_file() and path.suffix.lower() == ".safetensors"):
        if path.is_dir():
            info, kind = folder_info(path), "diffusers folder"
        else:
            info, kind = classify_keys(path, *read_safetensors_header(path)), "single file"
        preset = DEMO_PRESET if is_demo_model(path) else FAMILY_PRESETS[info.family]
        description = f"`{path.name}` ({info.describe()}, {kind})"
        return ModelChoice(name, info.family, info.v_parameterization, preset, description)
    if not path.is_file() and not looks_like_hub_id(name):
        raise ConfigError(f"{name}: no such file or folder here; check the path (or Browse).")
    family = family_from_name(path.name if path.is_file() else name)
    epsilon = family == "sd2" and "base" in name.lower()  # SD 2.x base (512 px) predicts noise
    what = "a pickled checkpoint" if path.is_file() else "a hub id"
    description = (
        f"`{name}` ({what}; {FAMILY_NAMES[family]} going by its name: the run reads the "
        "file itself)"
    )
    return ModelChoice(
        name, family, False if epsilon else None, FAMILY_PRESETS[family], description
    )


def family_from_name(name: str) -> str:
    """A guess for what torch-free reading cannot open (.ckpt, hub ids): sd_xl_base_1.0,
    v2-1_768-ema-pruned, stabilityai/stable-diffusion-2-1 ...; SD 1.x otherwise."""
    lower = name.lower()
    if "xl" in lower:
        return "sdxl"
    if re.search(r"(sd|v|diffusion-)2|768", lower):
        return "sd2"
    return "sd1"


def is_demo_model(path: Path) -> bool:
    """The demo's model/ folder or model.safetensors: its marker file lies beside them."""
    try:
        return "family" in json.loads((path.parent / DEMO_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


def datasets_dir() -> Path:
    """Where the dataset TOMLs written for plain image folders go: with the user's presets."""
    return presets.user_dir() / "datasets"


def image_source(folder: str, class_tokens: str) -> tuple[dict[str, str], str]:
    """The [dataset] options for an image folder, and how it is read, in words. A parent of
    N_name folders is train_data_dir (as the Dataset tab takes it); a plain folder of images
    gets a dataset TOML of one subset (dataset_config), since train_data_dir reads only
    N_name subfolders. A plain folder named N_name keeps its repeats and class tokens."""
    text = (folder or "").strip().strip('"')
    if not text:
        raise ConfigError("Pick the image folder first.")
    path = Path(text).expanduser().absolute()
    if not path.is_dir():
        raise DatasetError(f"{path}: folder not found; check the path (or Browse).")
    children = sorted(child for child in path.iterdir() if not child.name.startswith("."))
    named = [c.name for c in children if c.is_dir() and (parse_folder_name(c.name) or (0,))[0] > 0]
    if named:
        shown = ", ".join(f"`{name}`" for name in named[:3]) + (" ..." if len(named) > 3 else "")
        return {"train_data_dir": str(path)}, (
            f"`{path}` holds {len(named)} N_name folder(s) ({shown}): read as train_data_dir."
        )
    images = [child for child in children if child.is_file() and is_image_file(child)]
    if not images:
        raise DatasetError(
            f"{path}: no images in it and no N_name subfolders (such as 10_mychar4 person); "
            "pick the folder that holds the images, or the parent of the N_name folders."
        )
    parsed = parse_folder_name(path.name)
    repeats, tokens = parsed if parsed and parsed[0] > 0 else (1, class_tokens)
    subset = {"image_dir": str(path), "num_repeats": repeats, "class_tokens": tokens}
    toml_path = write_dataset_toml(path, subset)
    return {"dataset_config": str(toml_path)}, (
        f"`{path}` is a plain folder of {len(images)} images: written as the dataset TOML "
        f"`{toml_path}` (one subset, {repeats} repeat(s); images without a caption file "
        f'get "{tokens}").'
    )


def write_dataset_toml(folder: Path, subset: dict[str, Any]) -> Path:
    """One file per image folder (named after it), rewritten when picked again."""
    digest = hashlib.sha1(str(folder).encode()).hexdigest()[:8]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", folder.name).strip("-.") or "images"
    path = datasets_dir() / f"{slug}-{digest}.toml"
    header = f"# Written by the GUI's Start tab for the image folder {folder}.\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, header + tomli_w.dumps({"datasets": [{"subsets": [subset]}]}))
    return path


def config_for_images(model: str, folder: str, token: str, init_word: str) -> ImagesChoice:
    """The form for "My images": the model's preset, then the model, images and token."""
    token, init_word = (token or "").strip(), (init_word or "").strip()
    if not token:
        raise ConfigError("Type the token first: a made-up word such as mychar4.")
    choice = model_choice(model)
    config = config_from_toml(read_preset(choice.preset), source=f"preset {choice.preset}")
    config.model.pretrained_model_name_or_path = choice.name
    if choice.family == "sd2" and choice.v_parameterization is False:
        config.model.v_parameterization = False  # SD 2.x base: noise prediction at 512 px
        config.dataset.resolution = "512"
    elif choice.v_parameterization:
        config.model.v_parameterization = True
    set_option(config, "token_string", token, "Token")
    if init_word:
        set_option(config, "init_word", init_word, "Init word")
    class_tokens = f"{token} {config.token.init_word}".strip()
    sources, where = image_source(folder, class_tokens)
    data = config.dataset
    data.train_data_dir = data.dataset_config = data.in_json = data.reg_data_dir = ""
    for name, value in sources.items():
        set_option(config, name, value, name)
    config.saving.output_dir = f"runs/{token}"
    check_combinations(config, "the Start tab")
    return ImagesChoice(config, choice.preset, choice.description, where)


@dataclass
class StartTab:
    demo: gr.Button
    demo_status: gr.Markdown
    model: gr.Textbox
    images: gr.Textbox
    token: gr.Textbox
    init_word: gr.Textbox
    fill: gr.Button
    images_status: gr.Markdown
    report: gr.Markdown  # the dataset doctor's report on the images just picked
    filled: gr.State  # whether the last "My images" fill reached the form (then the doctor runs)
    pasted: gr.Textbox
    read: gr.Button
    paste_status: gr.Markdown


def path_box(option: str, elem: str, **textbox: Any) -> gr.Textbox:
    """A textbox with the project's Browse walker under it (path_picker), for a path that is
    not itself a form option: `option` says what it may name (a file or folder, which files)."""
    kind, _ = PATH_FIELDS[option]
    with gr.Column(min_width=240):
        box = gr.Textbox(lines=1, max_lines=1, elem_id=f"start-{elem}", **textbox)
        browse = gr.Button("Browse…", size="sm", elem_id=f"start-browse-{elem}")
        with gr.Group(visible=False, elem_id=f"start-picker-{elem}") as panel:
            where = gr.Markdown()
            entries = gr.Dropdown(
                [], label=f"Pick a {kind}", info="A folder opens it; a file is used at once.",
                allow_custom_value=True, elem_id=f"start-picker-entries-{elem}",
            )  # fmt: skip
            with gr.Row():
                use = gr.Button("Use this folder", size="sm", visible=kind != "file")
                close = gr.Button("Close", size="sm")
    wire_picker(PathPicker(option, box, browse, panel, where, entries, use, close, gr.State("")))
    return box


def build() -> StartTab:
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=300):
            gr.Markdown(
                "### 1. Try the demo\nA tiny built-in model and 24 pictures of an orange toy: "
                "nothing to download, a few minutes on a CPU. One click loads the **demo** "
                "preset and starts training."
            )
            demo = gr.Button("Try the demo", variant="primary", elem_id="start-demo")
            demo_status = gr.Markdown(elem_id="start-demo-status")
        with gr.Column(scale=3, min_width=380):
            gr.Markdown(
                "### 2. My images\nThe model's family (SD 1.x, 2.x, SDXL) picks the preset "
                "that fills the rest: resolution, learning rate, steps."
            )
            model = path_box(
                "pretrained_model_name_or_path", "model", label="Base model",
                placeholder="models/v1-5-pruned-emaonly.safetensors",
                info="A .safetensors / .ckpt file, a diffusers folder, a hub id, or demo:sd1.",
            )  # fmt: skip
            images = path_box(
                "train_data_dir", "images", label="Image folder", placeholder="datasets/mychar",
                info="Images + .txt captions, or a parent of N_name folders (10_mychar4 person).",
            )  # fmt: skip
            with gr.Row():
                token = gr.Textbox(
                    label="Token", placeholder="mychar4", elem_id="start-token",
                    info="A made-up word your captions use.",
                )  # fmt: skip
                init_word = gr.Textbox(
                    label="Init word", placeholder="person", elem_id="start-init-word",
                    info="A real word close to it, to start from.",
                )  # fmt: skip
            fill = gr.Button(
                "Fill the form and check the images", variant="primary", elem_id="start-fill"
            )
            images_status = gr.Markdown(elem_id="start-images-status")
            report = gr.Markdown(elem_id="start-report")
        with gr.Column(scale=3, min_width=380):
            gr.Markdown(
                "### 3. Paste an sd-scripts command\nAn `accelerate launch ... "
                "train_textual_inversion.py` command line (with `\\` continuations, "
                "--config_file, --dataset_config), an sd-scripts TOML, or this trainer's TOML."
            )
            pasted = gr.Textbox(
                lines=7, max_lines=30, label="Command line or TOML", placeholder=PASTE_EXAMPLE,
                elem_id="start-paste",
            )  # fmt: skip
            read = gr.Button("Fill the form from it", variant="primary", elem_id="start-read")
            paste_status = gr.Markdown(elem_id="start-paste-status")
    return StartTab(
        demo, demo_status, model, images, token, init_word, fill, images_status, report,
        gr.State(False), pasted, read, paste_status,
    )  # fmt: skip


# The tab bar is the browser's: once the demo trains, open the Run tab, where its chart and
# samples are (a refusal stays on Start, next to its message).
SHOW_RUN_WHEN_STARTED = """(status) => {
    if ((status || '').includes('Started')) document.querySelector('#run-tab-button')?.click();
}"""


def demo_started(message: str) -> str:
    """The run bar's answer to Train, with where to follow the run."""
    if not (message or "").startswith("Started"):
        return message or ""
    return (
        f"**{message}**\n\nThe bar above follows it from every tab (step, speed, time left); "
        "the **Run** tab shows the loss, the samples and the saved steps. **Stop** ends it "
        "after the current step."
    )


def images_message(preset: str, model: str, where: str, config: Any) -> str:
    data, token = config.dataset, config.token
    rate, steps = config.optimizer.learning_rate, config.training.max_train_steps
    return (
        f"**Filled the form** from the `{preset}` preset for {model}: resolution "
        f"{data.resolution}, learning rate {rate}, {steps} steps, batch size "
        f"{data.train_batch_size}; token `{token.token_string}` starting from "
        f"`{token.init_word}`; the run goes to `{config.saving.output_dir}`.\n\n"
        f"Images: {where}\n\nThe dataset check follows; then press **Train** above."
    )


def paste_message(kind: str, options: list[str], notes: list[str]) -> str:
    named = ", ".join(f"`{name}`" for name in options) or "none"
    lines = [
        f"**Filled the form** from the {kind}: {len(options)} options set ({named}); the "
        "others keep their defaults."
    ]
    lines += [f"- {note}" for note in notes]
    lines.append("Check the Model and Dataset tabs, then press **Train** above.")
    return "\n\n".join(lines[:1]) + "\n\n" + "\n".join(lines[1:])


def wire(tab: StartTab, form: Form, loader: FormLoader, train: TrainStart) -> None:
    private = {"api_visibility": "private"}

    def load_demo() -> dict[Any, Any]:
        return loader.from_preset(DEMO_PRESET)

    tab.demo.click(load_demo, outputs=loader.outputs, **private).then(
        train.fn, inputs=train.inputs, outputs=train.outputs, **private
    ).then(demo_started, inputs=train.outputs[0], outputs=tab.demo_status, **private).then(
        None, inputs=tab.demo_status, js=SHOW_RUN_WHEN_STARTED, **private
    )

    def fill_from_images(model: str, folder: str, token: str, init_word: str) -> dict[Any, Any]:
        try:
            choice = config_for_images(model, folder, token, init_word)
        except TiError as error:
            return {tab.images_status: f"**Cannot fill the form:** {error}", tab.filled: False,
                    tab.report: ""}  # fmt: skip
        message = images_message(choice.preset, choice.model, choice.images, choice.config)
        return {
            **loader.from_text(config_to_toml(choice.config)),
            tab.images_status: message,
            tab.report: "Checking the dataset…",
            tab.filled: True,
        }

    def check_dataset(data: dict[Any, Any]) -> dict[Any, Any]:
        """The Dataset tab's doctor on the form just filled (its fixes are on that tab)."""
        if not data[tab.filled]:
            return {tab.report: ""}
        result = form.collect(data)
        if result.config is None:
            return {tab.report: "Fix the config first.\n\n" + result.message()}
        report = report_markdown(*run_doctor(result.config))
        return {tab.report: f"{report}\n\nCaption fixes and more options: the **Dataset** tab."}

    tab.fill.click(
        fill_from_images, inputs=[tab.model, tab.images, tab.token, tab.init_word],
        outputs=[*loader.outputs, tab.images_status, tab.report, tab.filled], **private,
    ).then(
        check_dataset, inputs=form.inputs() | {tab.filled}, outputs=tab.report, **private
    )  # fmt: skip

    def fill_from_paste(text: str) -> dict[Any, Any]:
        try:
            pasted = config_from_paste(text, cwd=Path.cwd())
        except TiError as error:
            return {tab.paste_status: f"**Not read:** {error}"}
        message = paste_message(pasted.kind, pasted.options, pasted.notes)
        return {**loader.from_text(config_to_toml(pasted.config)), tab.paste_status: message}

    tab.read.click(
        fill_from_paste, inputs=tab.pasted, outputs=[*loader.outputs, tab.paste_status],
        **private,
    )  # fmt: skip
