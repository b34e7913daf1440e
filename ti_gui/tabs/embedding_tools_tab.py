"""The Generate tab's tools: a checkpoint comparison grid (a run's checkpoints x seeds in one
labelled PNG) and the embedding inspector with format conversion; all done by the worker."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from ti_gui.generate_view import generate_options
from ti_gui.generation_client import CLIENT, GenerationClient
from ti_gui.supervisor import list_runs

MAX_DEFAULT_CHECKPOINTS = 6  # ticked when a run is picked; any others can be ticked too
FORMATS = ("kohya", "a1111", "diffusers")
DEFAULT_SEEDS = "1, 2, 3"


@dataclass
class ToolsTab:
    run: gr.Dropdown
    refresh: gr.Button
    checkpoints: gr.CheckboxGroup
    seeds: gr.Textbox
    prompt: gr.Textbox
    make_grid: gr.Button
    grid_message: gr.Markdown
    grid: gr.Image
    run_info: gr.State  # the picked run: {"trigger", "model": load_model's fields}
    inspect_path: gr.Textbox
    inspect: gr.Button
    report: gr.Markdown
    convert_to: gr.Dropdown
    convert: gr.Button
    convert_message: gr.Markdown


# ---- checkpoint grid ------------------------------------------------------------------------


def parse_seeds(text: str) -> list[int]:
    """ "1, 2, 3" -> [1, 2, 3]; ValueError with a message a person can act on."""
    seeds = []
    for part in (text or "").replace(";", ",").replace(" ", ",").split(","):
        if not part.strip():
            continue
        try:
            seeds.append(int(part))
        except ValueError:
            raise ValueError(f"seed {part.strip()!r} is not a whole number.") from None
    if not seeds:
        raise ValueError("no seeds given: type one or more, e.g. 1, 2, 3.")
    return seeds


def pick_evenly(paths: list[str], count: int) -> list[str]:
    """Up to `count` of `paths`, spread from first to last."""
    if len(paths) <= count:
        return list(paths)
    step = (len(paths) - 1) / (count - 1)
    return [paths[round(index * step)] for index in range(count)]


def list_checkpoints(
    client: GenerationClient, folder: str
) -> tuple[list[tuple[str, str]], list[str], dict[str, Any], str]:
    """The run's checkpoints as (label, path) choices, the ones ticked by default, the run
    ({"trigger", "model": load_model's fields or None}) and a message."""
    if not folder:
        return [], [], {}, "Pick a run."
    reply = client.request("list_checkpoints", run=str(folder))
    if not reply.get("ok"):
        return [], [], {}, error_markdown(reply)
    run = {"trigger": str(reply.get("trigger") or ""), "model": reply.get("model")}
    choices = [
        (str(c.get("label") or Path(c["path"]).name), str(c["path"]))
        for c in reply.get("checkpoints", [])
    ]
    if not choices:
        return [], [], run, f"`{folder}` has no saved embeddings yet."
    ticked = pick_evenly([path for _, path in choices], MAX_DEFAULT_CHECKPOINTS)
    note = f"{len(choices)} checkpoint(s) of **{run['trigger'] or '?'}**"
    if run["model"]:
        note += f", trained on `{run['model'].get('model')}`"
    return choices, ticked, run, note + "."


def make_grid(
    client: GenerationClient,
    checkpoints: list[str],
    seeds_text: str,
    prompt: str,
    run: dict[str, Any],
    outdir: str | Path,
    **settings: Any,
) -> tuple[str, str]:
    """The grid's PNG path ("" on failure) and a message. The run's base model is loaded
    first when another (or none) is loaded: a checkpoint only means something on it."""
    if not checkpoints:
        return "", "**Error:** no checkpoints ticked.\n\n*What to do:* pick a run, tick some."
    try:
        seeds = parse_seeds(seeds_text)
    except ValueError as error:
        return "", f"**Error:** {error}"
    if not (prompt or "").strip():
        return "", "**Error:** the prompt is empty.\n\n*What to do:* e.g. a photo of NAME"
    lines = []
    model = run.get("model")
    loaded = (client.model_request or {}).get("model")
    if model and model.get("model") != loaded:
        reply = client.request("load_model", **model)
        if not reply.get("ok"):
            return "", error_markdown(reply)
        lines.append(f"Loaded the run's base model `{model.get('model')}` first.")
    elif client.model_request is None:
        return "", "**Error:** the run does not name its base model: load one above first."
    reply = client.request(
        "compare_grid", checkpoints=list(checkpoints), seeds=seeds, prompt=prompt,
        trigger=run.get("trigger") or "", outdir=str(outdir), **settings,
    )  # fmt: skip
    if not reply.get("ok"):
        return "", error_markdown(reply)
    lines.insert(
        0,
        f"Saved `{reply['grid']}` ({reply.get('width')}x{reply.get('height')}): rows "
        f"{', '.join(map(str, reply.get('rows', [])))}; columns "
        f"{', '.join(map(str, reply.get('columns', [])))}.",
    )
    lines += [f"⚠️ {warning}" for warning in reply.get("warnings", [])]
    lines += [f"ℹ️ {notice}" for notice in reply.get("notices", [])]
    return str(reply["grid"]), "\n\n".join(lines)


def default_prompt(trigger: str) -> str:
    return f"a photo of {trigger}" if trigger else ""


# ---- inspector and conversion ---------------------------------------------------------------


def report_markdown(report: dict[str, Any]) -> str:
    """ti_core.embeddings.inspect's report as Markdown tables."""
    lines = [
        f"**{report.get('path')}**: {report.get('format')} embedding, trigger word "
        f"**{report.get('trigger')}**"
        + (f" (the file names the token `{report['file_token']}`)" if report.get("file_token")
           else ""),
        f"{report.get('num_vectors')} vector(s) per text encoder.",
    ]  # fmt: skip
    trained = report.get("trained_on") or {}
    if trained:
        lines.append("Trained on: " + ", ".join(f"{k} `{v}`" for k, v in trained.items()))
    else:
        lines.append("Trained on: the file does not say.")
    if "model" in report:
        lines.append(f"Compared with {report['model']}.")
        if not report.get("fits_model", True):
            lines.append(f"**Does not fit this model:** {report.get('model_problem', '')}")
    for entry in report.get("encoders", []):
        typical = entry.get("vocabulary_median_norm")
        lines.append(
            f"**{entry.get('name')}**: {entry.get('vectors')} x {entry.get('dims')} "
            f"({entry.get('dtype')})"
            + (f"; the vocabulary's median norm is {typical}" if typical is not None else "")
        )
        nearest = entry.get("nearest_tokens")
        rows = ["| vector | norm | vs typical | nearest tokens (cosine) |", "|---|---|---|---|"]
        for index, norm in enumerate(entry.get("norms", [])):
            ratio = f"{norm / typical:.1f}x" if typical else "-"
            near = (
                ", ".join(f"`{t['token']}` {t['cosine']:.2f}" for t in nearest[index])
                if nearest
                else "(load a model to compare)"
            )
            rows.append(f"| {index} | {norm} | {ratio} | {near.replace('|', '/')} |")
        lines.append("\n".join(rows))
    return "\n\n".join(lines)


def inspect(client: GenerationClient, path: str, model: str = "") -> str:
    """Markdown report on one file; compared with the loaded model, else with `model`."""
    path = (path or "").strip()
    if not path:
        return "**Error:** no embedding file given."
    if not Path(path).expanduser().is_file():
        return f"**Error:** {path}: no such file.\n\n*What to do:* check the path."
    fields: dict[str, Any] = {"path": str(Path(path).expanduser())}
    if client.model_request is None and model:
        fields["model"] = model
    reply = client.request("inspect", **fields)
    if not reply.get("ok"):
        return error_markdown(reply)
    return report_markdown(reply["report"])


def convert(client: GenerationClient, path: str, to: str) -> str:
    path = (path or "").strip()
    if not path or not Path(path).expanduser().is_file():
        return f"**Error:** {path or 'no file given'}: no such file."
    reply = client.request("convert", path=str(Path(path).expanduser()), to=to)
    if not reply.get("ok"):
        return error_markdown(reply)
    return f"Wrote `{reply['path']}` ({to} format)."


def error_markdown(reply: dict[str, Any]) -> str:
    lines = [f"ℹ️ {notice}" for notice in reply.get("notices", [])]
    lines.append(f"**Error:** {reply.get('error', 'unknown error')}")
    if reply.get("hint"):
        lines.append(f"*What to do:* {reply['hint']}")
    return "\n\n".join(lines)


# ---- the widgets ----------------------------------------------------------------------------


def build(embedding: str) -> ToolsTab:
    with gr.Accordion("Checkpoint comparison grid", open=False):
        with gr.Row():
            run = gr.Dropdown([], label="Run", scale=4, elem_id="grid-run")
            refresh = gr.Button("Refresh runs")
        checkpoints = gr.CheckboxGroup([], label="Checkpoints (rows)", elem_id="grid-checkpoints")
        with gr.Row():
            seeds = gr.Textbox(DEFAULT_SEEDS, label="Seeds (columns)", elem_id="grid-seeds")
            prompt = gr.Textbox("", label="Prompt", scale=3, elem_id="grid-prompt")
        make_grid_button = gr.Button("Make grid", elem_id="grid-button")
        grid_message = gr.Markdown(elem_id="grid-message")
        grid = gr.Image(label="Grid", type="pil", interactive=False, elem_id="grid-image")
    with gr.Accordion("Inspect / convert an embedding", open=False):
        with gr.Row():
            inspect_path = gr.Textbox(embedding, label="Embedding file", scale=4)
            inspect_button = gr.Button("Inspect")
        report = gr.Markdown(elem_id="inspect-report")
        with gr.Row():
            convert_to = gr.Dropdown(list(FORMATS), value="a1111", label="Convert to")
            convert_button = gr.Button("Convert")
        convert_message = gr.Markdown()
    return ToolsTab(
        run, refresh, checkpoints, seeds, prompt, make_grid_button, grid_message, grid,
        gr.State({}), inspect_path, inspect_button, report, convert_to, convert_button,
        convert_message,
    )  # fmt: skip


def wire(
    tab: ToolsTab,
    runs_root: gr.Textbox,
    model: gr.Textbox,
    settings: dict[str, gr.components.Component],
    app: gr.Blocks,
) -> Any:
    """`settings`: the Generate tab's widgets by option name (width, steps, ...) the grid is
    made with.
    Returns the Make grid event: the grid may load the run's model, the caller shows it."""
    private = {"api_visibility": "private"}

    def runs(root: str) -> Any:
        return gr.update(choices=[str(path) for path in list_runs(root)])

    def pick_run(folder: str, prompt: str, old: dict[str, Any]) -> dict[Any, Any]:
        choices, ticked, run, text = list_checkpoints(CLIENT, folder)
        out = {
            tab.checkpoints: gr.update(choices=choices, value=ticked),
            tab.run_info: run,
            tab.grid_message: text,
        }
        if not prompt or prompt == default_prompt((old or {}).get("trigger", "")):
            out[tab.prompt] = default_prompt(run.get("trigger", ""))
        return out

    def grid(data: dict[Any, Any]) -> dict[Any, Any]:
        values = generate_options({name: data[widget] for name, widget in settings.items()})
        outdir = Path(data[runs_root] or ".").expanduser().resolve() / "generated" / "grids"
        path, text = make_grid(
            CLIENT, data[tab.checkpoints] or [], data[tab.seeds], data[tab.prompt],
            data[tab.run_info], outdir, **values,
        )  # fmt: skip
        out: dict[Any, Any] = {tab.grid_message: text}
        if path:
            with Image.open(path) as image:
                out[tab.grid] = image.copy()
        return out

    tab.refresh.click(runs, inputs=runs_root, outputs=tab.run, **private)
    app.load(runs, inputs=runs_root, outputs=tab.run, **private)
    tab.run.input(
        pick_run, inputs=[tab.run, tab.prompt, tab.run_info],
        outputs=[tab.checkpoints, tab.run_info, tab.grid_message, tab.prompt], **private,
    )  # fmt: skip
    inputs = {tab.checkpoints, tab.seeds, tab.prompt, tab.run_info, runs_root}
    grid_made = tab.make_grid.click(
        grid, inputs=inputs | set(settings.values()), outputs=[tab.grid_message, tab.grid],
        **private,
    )  # fmt: skip
    tab.inspect.click(
        lambda path, name: inspect(CLIENT, path, name), inputs=[tab.inspect_path, model],
        outputs=tab.report, **private,
    )  # fmt: skip
    tab.convert.click(
        lambda path, to: convert(CLIENT, path, to), inputs=[tab.inspect_path, tab.convert_to],
        outputs=tab.convert_message, **private,
    )  # fmt: skip
    return grid_made
