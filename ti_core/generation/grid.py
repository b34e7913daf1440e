"""The checkpoint comparison grid: one labelled image, a row per embedding checkpoint of a run
and a column per seed, so a person sees at which step the embedding was best.

Reading a run folder needs no torch (the worker answers list_checkpoints with no model loaded);
the grid itself uses a loaded `ti_core.generation.generator.Generator`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import struct
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from ti_core.atomic import atomic_path
from ti_core.errors import ConfigError, TiError
from ti_core.generation.options import GenerateOptions, options_from
from ti_core.run_folder.names import EVENTS_FILE
from ti_core.run_folder.reader import read_run_folder

log = logging.getLogger(__name__)

MAX_CELLS = 64  # 64 images is already minutes on a GPU and far longer on a CPU
EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin", ".ckpt")
STEP_COPY = re.compile(r"-step(\d+)$")  # <output_name>-step00000500 (train_outputs.py)
EPOCH_COPY = re.compile(r"-(\d{6})$")  # <output_name>-000002
GRID_NAME = re.compile(r"grid-(\d{5})\.png$")


@dataclass
class Checkpoint:
    path: Path
    step: int | None
    label: str  # "step 500", "final (step 1000)", "epoch 2"
    final: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "step": self.step, "label": self.label}


@dataclass
class GridResult:
    image: Image.Image
    rows: list[str]  # one label per checkpoint
    columns: list[str]  # "seed N" per column
    settings: dict[str, Any]  # prompt, trigger, model, size, steps, ... checkpoints, seeds
    cells: list[list[dict[str, Any]]]  # generate()'s settings for each cell, rows x columns
    left: int  # where the first cell starts: the label column's width ...
    top: int  # ... and the title + seed header's height
    cell_width: int
    cell_height: int
    warnings: list[str] = field(default_factory=list)

    def cell_box(self, row: int, column: int) -> tuple[int, int, int, int]:
        x, y = self.left + column * self.cell_width, self.top + row * self.cell_height
        return (x, y, x + self.cell_width, y + self.cell_height)


# -- the run folder -------------------------------------------------------------------------


def run_config(run_folder: str | Path) -> dict[str, Any]:
    """The run's config.toml as a dict with sections (a flat sd-scripts file is accepted)."""
    path = Path(run_folder) / "config.toml"
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the run's config ({error}).") from None
    sections = ("model", "token", "saving")
    flat = {key: value for key, value in data.items() if not isinstance(value, dict)}
    return {name: {**flat, **data.get(name, {})} for name in sections}


def run_model(run_folder: str | Path) -> dict[str, Any]:
    """The base model the run trained on, with load_model's field names (model, v2, ...)."""
    model = run_config(run_folder).get("model", {})
    if not model.get("pretrained_model_name_or_path"):
        raise ConfigError(
            f"{run_folder}: no config.toml naming the base model; give the model to use."
        )
    return {
        "model": str(model["pretrained_model_name_or_path"]),
        "v2": bool(model.get("v2", False)),
        "v_parameterization": bool(model.get("v_parameterization", False)),
        "vae": str(model.get("vae", "")),
    }


def run_trigger(run_folder: str | Path) -> str:
    """The word for prompts: the run's output_name, else its token_string ("" if unknown)."""
    config = run_config(run_folder)
    name = config.get("saving", {}).get("output_name") or config.get("token", {}).get(
        "token_string"
    )
    return str(name or "")


def run_checkpoints(run_folder: str | Path) -> list[Checkpoint]:
    """The run's embedding files that still exist (pruning deletes old ones), by step, the final
    one last. From events.jsonl; from the files in the folder when there are no events. A step
    copy saved at the final file's step holds the same vectors and is left out."""
    folder = Path(run_folder)
    if not folder.is_dir():
        raise TiError(f"{folder}: no such run folder.")
    history = read_run_folder(folder)  # every run of it: a resumed run's checkpoints count too
    steps, final_path = history.checkpoint_files(), history.final_file()
    if not steps:  # no events (copied folder, other tool): read the file names
        files = [p for p in folder.iterdir() if p.suffix in EMBEDDING_SUFFIXES and p.is_file()]
        steps = {path.resolve(): _step_from_name(path) for path in files}
    name = run_trigger(folder)
    checkpoints = []
    for path, step in steps.items():
        twin = path.with_name(path.stem.removesuffix("_2") + path.suffix)
        if twin != path and twin in steps:
            continue  # the CLIP-G half of a diffusers SDXL pair: loads with its first half
        final = path == final_path or path.stem == name
        if final and step is None:
            step = _header_step(path)
        checkpoints.append(Checkpoint(path, step, checkpoint_label(path, step, final), final))
    final_steps = {c.step for c in checkpoints if c.final}
    checkpoints = [c for c in checkpoints if c.final or c.step is None or c.step not in final_steps]
    return sorted(checkpoints, key=lambda c: (c.final, c.step is None, c.step or 0, c.path.name))


def spread(checkpoints: list[Checkpoint], count: int = 4) -> list[Checkpoint]:
    """Up to `count` checkpoints evenly over the run: the first, the last (final) and between."""
    if len(checkpoints) <= count:
        return list(checkpoints)
    last = len(checkpoints) - 1
    return [checkpoints[round(i * last / (count - 1))] for i in range(count)]


def checkpoint_label(path: Path, step: int | None, final: bool = False) -> str:
    if final:
        return "final" if step is None else f"final (step {step})"
    if step is not None:
        return f"step {step}"
    epoch = EPOCH_COPY.search(path.stem)
    return f"epoch {int(epoch.group(1))}" if epoch else path.stem


def _step_from_name(path: Path) -> int | None:
    match = STEP_COPY.search(path.stem)
    return int(match.group(1)) if match else _header_step(path)


def _header_step(path: Path) -> int | None:
    """The step our writer records in a .safetensors header, read without loading tensors."""
    try:
        with open(path, "rb") as source:
            (length,) = struct.unpack("<Q", source.read(8))
            header = json.loads(source.read(min(length, 1 << 20)))
        return int(header["__metadata__"]["ti_trainer.step"])
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None


# -- the grid -------------------------------------------------------------------------------


def compare_grid(
    generator: Any,
    checkpoints: list[str | Path | Checkpoint],
    seeds: list[int],
    options: GenerateOptions | None = None,
    /,
    *,
    trigger: str,
    **fields: Any,
) -> GridResult:
    """One image per checkpoint (row) and seed (column), each checkpoint loaded under `trigger`.

    `options` (any field also given by name) are Generator.generate's; each cell is one image
    of its own seed. An embedding already loaded under `trigger` is set aside and put back
    afterwards; every other loaded embedding stays in use. A prompt without the trigger is a
    warning (the rows will look alike), not an error: it may be meant for the negative prompt.
    """
    options = options_from(fields, options)  # a bad option fails before anything is loaded
    prompt, negative_prompt = options.prompt, options.negative_prompt
    rows = _as_checkpoints(checkpoints)
    _check_grid(rows, seeds, trigger)
    warnings = []
    if trigger not in prompt and trigger not in negative_prompt:
        warnings.append(
            f"the prompt does not contain the trigger word {trigger!r}, so every row will look "
            f"the same. Put {trigger} in the prompt, e.g. 'a photo of {trigger}'."
        )
        log.warning("%s", warnings[0])
    previous = generator.embeddings.get(trigger)
    if previous is not None:
        generator.remove_embedding(trigger)
    cells: list[list[tuple[Any, dict[str, Any]]]] = []
    try:
        _check_fits(generator, rows, trigger)
        for number, row in enumerate(rows, 1):
            log.info("grid row %d/%d: %s (%s)", number, len(rows), row.label, row.path.name)
            _load(generator, row.path, trigger)
            once = dataclasses.replace(options, batch_count=1, batch_size=1)
            cells.append([generator.generate(once, seed=seed)[0] for seed in seeds])
            generator.remove_embedding(trigger)
    finally:
        if trigger in generator.embeddings:
            generator.remove_embedding(trigger)
        if previous is not None:
            generator.add_vectors(
                trigger, previous.vectors, path=previous.path, file_format=previous.format
            )
    first = cells[0][0][1]
    settings = {key: value for key, value in first.items() if key not in ("seed", "warnings")}
    settings.update(
        trigger=trigger,
        embeddings=", ".join(sorted(generator.embeddings)),
        checkpoints=[str(row.path) for row in rows],
        seeds=list(seeds),
    )
    labels, columns = [row.label for row in rows], [f"seed {seed}" for seed in seeds]
    grid, left, top = _draw([[image for image, _ in row] for row in cells], labels, columns, prompt)
    return GridResult(
        grid,
        labels,
        columns,
        settings,
        cells=[[{k: v for k, v in s.items() if k != "warnings"} for _, s in row] for row in cells],
        left=left,
        top=top,
        cell_width=cells[0][0][0].width,
        cell_height=cells[0][0][0].height,
        warnings=warnings + first["warnings"],
    )


def save_grid(result: GridResult, outdir: str | Path) -> Path:
    """Write the grid as outdir/grid-NNNNN.png (numbering after what is there), with prompt,
    settings, rows and columns in its PNG text metadata (lists as JSON)."""
    outdir = Path(outdir)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TiError(f"{outdir}: cannot create the output folder ({error}).") from None
    numbers = [int(m.group(1)) for p in outdir.iterdir() if (m := GRID_NAME.fullmatch(p.name))]
    path = outdir / f"grid-{max(numbers, default=-1) + 1:05d}.png"
    info = PngInfo()
    text = {**result.settings, "rows": result.rows, "columns": result.columns}
    for key, value in text.items():
        info.add_text(key, json.dumps(value) if isinstance(value, list) else str(value))
    with atomic_path(path) as temporary:
        result.image.save(temporary, format="PNG", pnginfo=info)
    return path


def _as_checkpoints(items: list[str | Path | Checkpoint]) -> list[Checkpoint]:
    """Checkpoints for paths; a run's own file gets its label from that run (step, final)."""
    runs: dict[Path, dict[Path, Checkpoint]] = {}
    found = []
    for item in items:
        if isinstance(item, Checkpoint):
            found.append(item)
            continue
        path = Path(item).resolve()
        if not path.is_file():
            raise TiError(f"{item}: checkpoint file not found (pruned or moved?).")
        if path.parent not in runs:
            is_run = any((path.parent / name).is_file() for name in (EVENTS_FILE, "config.toml"))
            listed = run_checkpoints(path.parent) if is_run else []
            runs[path.parent] = {c.path: c for c in listed}
        own = runs[path.parent].get(path)
        found.append(own or Checkpoint(path, None, checkpoint_label(path, _step_from_name(path))))
    missing = [c.path for c in found if not c.path.is_file()]
    if missing:
        raise TiError(f"{missing[0]}: checkpoint file not found (pruned or moved?).")
    return found


def _check_grid(rows: list[Checkpoint], seeds: list[int], trigger: str) -> None:
    if not rows:
        raise ConfigError("no checkpoints to compare: pick at least one embedding file.")
    if not seeds:
        raise ConfigError("no seeds: give at least one seed, e.g. 1 2 3.")
    if any(not isinstance(seed, int) or isinstance(seed, bool) for seed in seeds):
        raise ConfigError(f"seeds {seeds}: every seed must be a whole number.")
    if len(rows) * len(seeds) > MAX_CELLS:
        raise ConfigError(
            f"{len(rows)} checkpoints x {len(seeds)} seeds = {len(rows) * len(seeds)} images; "
            f"a grid holds at most {MAX_CELLS}. Pick fewer checkpoints or seeds."
        )
    if not trigger.strip():
        raise ConfigError("no trigger word: give the word the prompt uses for the embedding.")


def _check_fits(generator: Any, rows: list[Checkpoint], trigger: str) -> None:
    """Every file must fit the model before the first image is made. Only reads the files
    (loading each would rebuild the tokenizers twice); a misfit gets the Generator's message."""
    from ti_core.embeddings.writers import read_with_second_encoder

    for row in rows:
        if read_with_second_encoder(row.path)[0].widths != generator.widths:
            _load(generator, row.path, trigger)


def _load(generator: Any, path: Path, trigger: str) -> None:
    try:
        generator.add_embedding(path, trigger)
    except TiError as error:
        message = str(error)
        raise TiError(message if str(path) in message else f"{path}: {message}") from None


def _draw(
    images: list[list[Image.Image]], rows: list[str], columns: list[str], title: str
) -> tuple[Image.Image, int, int]:
    """Paste the cells under a title line and a seed header, right of a label column."""
    cell_width, cell_height = images[0][0].size
    # Below 12 px the default font's spaces all but vanish ("a photoofdemotoy").
    font = ImageFont.load_default(size=max(12, min(32, min(cell_width, cell_height) // 16)))
    size = font.size
    while size > 6 and max(font.getlength(text) for text in columns) > cell_width - 4:
        size -= 1
        font = ImageFont.load_default(size=size)
    pad = max(3, size // 2)
    line = size + 2 * pad
    left = int(max(font.getlength(text) for text in rows)) + 2 * pad
    top = 2 * line
    width = left + len(columns) * cell_width
    grid = Image.new("RGB", (width, top + len(rows) * cell_height), "white")
    draw = ImageDraw.Draw(grid)
    while len(title) > 1 and font.getlength(title) > width - 2 * pad:
        title = title[: -4 if title.endswith("...") else -1].rstrip() + "..."
    draw.text((pad, pad), title, fill="black", font=font)
    for column, text in enumerate(columns):
        x = left + column * cell_width + (cell_width - font.getlength(text)) / 2
        draw.text((x, line + pad), text, fill="black", font=font)
    for row, text in enumerate(rows):
        y = top + row * cell_height + (cell_height - size) // 2
        draw.text((pad, y), text, fill="black", font=font)
        for column, image in enumerate(images[row]):
            grid.paste(image.convert("RGB"), (left + column * cell_width, top + row * cell_height))
    return grid, left, top
