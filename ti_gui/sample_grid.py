"""The Run view's step x prompt grid: a row per saved step, a column per sample prompt (its
fixed seed under the heading), each cell the image that step made for that prompt, and the
CLIP-I / CLIP-T of the step when the run scored it. Drawn from the run record only
(ti_core/run_folder/reader.py); a click on a saved step's image opens it in Generate.

Samples of a step that saved no embedding (sample_every_n_steps not a multiple of
save_every_n_steps, Sample now, sample_at_first) get rows of their own marked "not saved": the
images still show how the run moves, but there is no file to load, so they do not click.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
from PIL import Image

from ti_core.errors import TiError
from ti_core.generation.options import OPTIONS
from ti_core.run_folder.names import SAMPLES_DIR
from ti_core.run_folder.reader import RunReader, Sample
from ti_gui.generate_view import (
    add_embedding,
    embedding_rows,
    folder_defaults,
    generate_options,
    load_model,
    model_markdown,
    remove_embedding,
)
from ti_gui.generation_client import CLIENT, GenerationClient
from ti_gui.supervisor import SUPERVISOR

if TYPE_CHECKING:  # the Generate tab's module imports the Run tab's, which imports this one
    from ti_gui.tabs.generate_tab import GenerateTab

SAVED, NOT_SAVED, PRUNED = "saved", "not saved", "pruned"
# A numbered copy (-step00000500, -000002 per epoch): the final file is saved over later.
NUMBERED_COPY = re.compile(r"-(step\d{8}|\d{6})$")
# What a sample PNG records (training/samples.py) that Generate has a widget for.
PNG_SETTINGS = ("prompt", "negative_prompt", "seed", "steps", "scale", "sampler", "width",
                "height")  # fmt: skip


@dataclass(frozen=True)
class Column:
    index: int  # the prompt's place in sample_prompts (the file name's <prompt index>)
    prompt: str
    seed: int | None


@dataclass(frozen=True)
class Row:
    step: int
    status: str  # SAVED, NOT_SAVED or PRUNED (saved, then deleted by save_last_n_*)
    checkpoint: Path | None  # the embedding file holding this step (SAVED rows only)
    cells: dict[int, Path]  # prompt index -> the sample image
    score: dict[str, Any] | None  # the step's score event {clip_i, clip_t, images}
    suggested: bool  # the step the run suggests keeping


@dataclass(frozen=True)
class SampleGrid:
    folder: Path
    columns: list[Column]
    rows: list[Row]
    scored: bool  # some step was scored: the score column shows

    def row(self, step: int) -> Row | None:
        return next((row for row in self.rows if row.step == step), None)

    def key(self) -> str:
        """What the page shows, as one string: drawn again only when it changes (a folder
        trained again writes new images under the same names: their times count too)."""
        shown = [self.folder, self.columns, self.scored]
        for r in self.rows:
            images = [(index, path, _modified(path)) for index, path in r.cells.items()]
            shown.append((r.step, r.status, r.checkpoint, images, r.score, r.suggested))
        return hashlib.sha1(repr(shown).encode()).hexdigest()


def _modified(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


# ---- the grid, from the run record ------------------------------------------------------------


def build_grid(reader: RunReader) -> SampleGrid:
    """Every run of the folder counts (a resumed run's earlier steps are its own); of two
    samples of one step and prompt, the later is the one on disk."""
    files = saved_files(reader)
    ever_saved = {s.step for run in reader.runs for s in run.checkpoints if s.step is not None}
    made: dict[tuple[int, int], Path] = {}
    columns: dict[int, Sample] = {}
    for run in reader.runs:
        for sample in run.samples:
            index, path = sample.prompt_index, sample_file(reader.folder, sample.path)
            if index is None or path is None:
                continue
            made[(sample.step, index)] = path
            columns[index] = sample  # the latest names the column
    scores = {event["step"]: event for run in reader.runs for event in run.scores}
    suggestion = reader.latest.suggestion or {}
    rows = []
    for step in sorted(set(files) | {step for step, _ in made}):
        status = SAVED if step in files else PRUNED if step in ever_saved else NOT_SAVED
        cells = {index: path for (at, index), path in made.items() if at == step}
        rows.append(Row(step, status, files.get(step), dict(sorted(cells.items())),
                        scores.get(step), suggestion.get("step") == step))  # fmt: skip
    heads = [Column(i, columns[i].prompt, columns[i].seed) for i in sorted(columns)]
    return SampleGrid(reader.folder, heads, rows, bool(scores))


def saved_files(reader: RunReader) -> dict[int, Path]:
    """Step -> the embedding file on disk that holds it: a numbered copy rather than the final
    file (a later save or Keep this step writes over that one)."""
    on_disk = reader.checkpoint_files()
    files: dict[int, Path] = {}
    for path, step in on_disk.items():
        twin = path.with_name(path.stem.removesuffix("_2") + path.suffix)
        if step is None or (twin != path and twin in on_disk):
            continue  # no step to match samples to; or the CLIP-G half of an SDXL pair
        if step not in files or (
            NUMBERED_COPY.search(path.stem) and not NUMBERED_COPY.search(files[step].stem)
        ):
            files[step] = path
    return files


def sample_file(folder: Path, path: str) -> Path | None:
    """A sample event's image: in the run folder's samples/ first (the folder may have been
    moved), then where the event says; None when it is gone."""
    for candidate in (folder / SAMPLES_DIR / Path(path).name, Path(path)):
        if candidate.is_file():
            return candidate
    return None


# ---- a cell, for Generate ---------------------------------------------------------------------


@dataclass(frozen=True)
class Pick:
    step: int
    checkpoint: Path
    settings: dict[str, Any]  # GenerateOptions fields the image was made with


def pick(grid: SampleGrid, step: int, prompt_index: int) -> Pick:
    """The checkpoint and settings of one cell; TiError when it cannot open in Generate."""
    row = grid.row(step)
    image = row.cells.get(prompt_index) if row else None
    if row is None or image is None:
        raise TiError(f"step {step} has no sample of prompt {prompt_index + 1} in this run.")
    if row.status != SAVED or row.checkpoint is None or not row.checkpoint.is_file():
        raise TiError(
            f"step {step} has no embedding file on disk ({row.status}); pick a saved step."
        )
    column = next(c for c in grid.columns if c.index == prompt_index)
    return Pick(step, row.checkpoint, sample_settings(image, column))


def sample_settings(image: Path, column: Column) -> dict[str, Any]:
    """What the sample was made with, from its PNG text (the prompt and seed of its column when
    the image says nothing), as Generate's widget values."""
    try:
        with Image.open(image) as opened:
            text = dict(getattr(opened, "text", None) or {})
    except OSError:
        text = {}
    values: dict[str, Any] = {"prompt": column.prompt, "seed": column.seed}
    values |= {name: text[name] for name in PNG_SETTINGS if name in text}
    settings = {}
    for name, value in generate_options({k: v for k, v in values.items() if v is not None}).items():
        info = OPTIONS[name]
        if isinstance(value, info.type) and (info.choices is None or value in info.choices):
            settings[name] = value  # a value Generate would refuse is left as the user had it
    return settings


# ---- the click ---------------------------------------------------------------------------------

# The Generate tab's button (Gradio gives it the tab's elem_id + "-button"); the values pass on.
SHOW_GENERATE = (
    "(...values) => { document.querySelector('#generate-tab-button')?.click(); return values; }"
)


def wire(grid: gr.HTML, shown: gr.Dropdown, generate: GenerateTab) -> None:
    """A click on a saved step's image: Generate gets the run's base model, that checkpoint
    under the run's token string, and the image's prompt, seed and settings; then shows, and
    loads them into the generation worker."""
    options = generate.options
    settings = [options[name] for name in (*PNG_SETTINGS, "clip_skip", "max_token_length")]
    loading = [generate.model, generate.v2, generate.v_parameterization, generate.vae,
               generate.embedding_path, generate.embedding_trigger]  # fmt: skip
    filled = [*loading, generate.messages, *settings]

    def fill(folder: str, event: gr.EventData) -> dict[Any, Any]:
        data = event._data or {}
        try:
            chosen = pick(build_grid(SUPERVISOR.state(folder)), int(data["step"]),
                          int(data["prompt"]))  # fmt: skip
        except (TiError, KeyError, TypeError, ValueError) as error:
            raise gr.Error(f"Cannot open that image in Generate: {error}") from None
        run = folder_defaults(folder)
        out = {generate.model: run.model, generate.v2: run.v2,
               generate.v_parameterization: run.v_parameterization, generate.vae: run.vae,
               generate.embedding_path: str(chosen.checkpoint),
               generate.embedding_trigger: run.token_string,
               options["clip_skip"]: run.clip_skip,
               options["max_token_length"]: run.max_token_length}  # fmt: skip
        out |= {options[name]: value for name, value in chosen.settings.items()}
        out[generate.messages] = (
            f"From the sample grid: step {chosen.step}, `{chosen.checkpoint.name}` as "
            f"**{run.token_string or chosen.checkpoint.stem}**, with the image's prompt and "
            "settings. Loading it…"
        )
        return out

    def load(model: str, v2: bool, v_param: bool, vae: str, path: str, trigger: str) -> dict:
        state, text = load_checkpoint(CLIENT, model, v2, v_param, vae, path, trigger)
        out: dict[Any, Any] = {generate.messages: text}
        if state:
            triggers = [e["trigger"] for e in state.get("embeddings", [])]
            out[generate.model_status] = model_markdown(state)
            out[generate.embeddings] = embedding_rows(state.get("embeddings", []))
            out[generate.remove_choice] = gr.update(choices=triggers, value=trigger or None)
        return out

    listing = [generate.model_status, generate.embeddings, generate.remove_choice]
    grid.click(fill, inputs=shown, outputs=filled, api_visibility="private").success(
        load, inputs=loading, outputs=[*listing, generate.messages], js=SHOW_GENERATE,
        api_visibility="private",
    )  # fmt: skip


def load_checkpoint(
    client: GenerationClient, model: str, v2: bool, v_parameterization: bool, vae: str,
    path: str, trigger: str,
) -> tuple[dict[str, Any], str]:  # fmt: skip
    """The run's base model (unless the worker holds it already), then `path` under `trigger`
    in place of the embedding loaded under that trigger before. (state, messages)."""
    held = client.model_request or {}
    wanted = {"model": model.strip(), "v2": bool(v2),
              "v_parameterization": bool(v_parameterization), "vae": vae or ""}  # fmt: skip
    messages = []
    if any(held.get(key) != value for key, value in wanted.items()):
        state, text = load_model(client, model, v2, v_parameterization, vae)
        if not state:
            return {}, text
        messages.append(text)
    if trigger and trigger in {e.get("trigger") for e in client.embeddings}:
        state, text = remove_embedding(client, trigger)
        if not state:
            return {}, text
    state, text = add_embedding(client, path, trigger)
    return state, "\n\n".join(m for m in (*messages, text) if m)
