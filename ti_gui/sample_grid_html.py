"""How the sample grid looks: an HTML table of thumbnails in a gr.HTML, with its CSS and the
one click listener that reports which cell was pressed (the grid itself: sample_grid.py)."""

from __future__ import annotations

import hashlib
import html
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import gradio as gr
from gradio.utils import get_upload_folder
from PIL import Image

from ti_gui.sample_grid import PRUNED, SAVED, Row, SampleGrid

THUMBNAIL_PX = 192  # made once per image; shown at IMAGE_PX or less
IMAGE_PX = (96, 144)  # the smallest and largest shown size: fewer prompts, bigger images
HEADING_CHARS = 48

# ---- the page ---------------------------------------------------------------------------------


def render(grid: SampleGrid, thumbnails: Path | None = None) -> str:
    """The grid as an HTML table of thumbnails (made once, in Gradio's upload folder, which its
    file route serves)."""
    if not grid.columns:
        return (
            '<p class="ti-grid-note">No sample images yet. Set sample_prompts and '
            "sample_every_n_steps (Sampling &amp; saving) to see each saved step here.</p>"
        )
    folder = thumbnails or Path(get_upload_folder()) / "ti-thumbnails"
    size = max(IMAGE_PX[0], min(IMAGE_PX[1], 900 // len(grid.columns)))
    best = _best_scores(grid.rows)
    head = "".join(
        f'<th class="ti-prompt" title="{_text(c.prompt)}">{_text(_short(c.prompt))}'
        f"<small>prompt {c.index + 1}" + (f" · seed {c.seed}" if c.seed is not None else "")
        + "</small></th>"
        for c in grid.columns
    )  # fmt: skip
    if grid.scored:
        head += (
            "<th title=\"CLIP-I: how much this step's images look like the training images. "
            'CLIP-T: how well they follow edit prompts. Raw cosines: higher is better.">'
            "scores</th>"
        )
    body = "".join(_row_html(grid, row, size, folder, best) for row in grid.rows)
    saved = sum(row.status == SAVED for row in grid.rows)
    return (
        f'<p class="ti-grid-note">{saved} saved step(s) × {len(grid.columns)} prompt(s). Click '
        "an image of a saved step to open it in <b>Generate</b> with that checkpoint, prompt "
        'and seed.</p><div class="ti-grid-scroll"><table class="ti-grid">'
        f"<thead><tr><th>step</th>{head}</tr></thead><tbody>{body}</tbody></table></div>"
    )


def _row_html(grid: SampleGrid, row: Row, size: int, thumbs: Path, best: dict) -> str:
    if row.status == SAVED and row.checkpoint is not None:
        note = f'<small title="{_text(row.checkpoint)}">{_text(row.checkpoint.stem)}</small>'
    elif row.status == PRUNED:
        note = '<small title="its embedding file was deleted (save_last_n_steps)">pruned</small>'
    else:
        note = '<small title="no embedding was saved at this step">not saved</small>'
    star = '<small class="ti-suggested">★ suggested</small>' if row.suggested else ""
    cells = []
    for column in grid.columns:
        path = row.cells.get(column.index)
        thumb = thumbnail(path, thumbs) if path else None
        if thumb is None:
            cells.append('<td class="ti-empty" title="no sample of this prompt here">–</td>')
            continue
        label = f"step {row.step} · {column.prompt}"
        image = (f'<img src="{_file_url(thumb)}" alt="{_text(label)}" loading="lazy" '
                 f'width="{size}" height="{size}">')  # fmt: skip
        if row.status == SAVED:
            image = (f'<button type="button" data-step="{row.step}" '
                     f'data-prompt="{column.index}" title="{_text(label)} (click: open in '
                     f'Generate)">{image}</button>')  # fmt: skip
        cells.append(f"<td>{image}</td>")
    if grid.scored:
        cells.append(f'<td class="ti-score">{_score_html(row.score, best)}</td>')
    return (
        f'<tr class="ti-{row.status.replace(" ", "-")}"><th scope="row">step {row.step}'
        f"{note}{star}</th>{''.join(cells)}</tr>"
    )


def _best_scores(rows: list[Row]) -> dict[str, float]:
    best: dict[str, float] = {}
    for row in rows:
        for name in ("clip_i", "clip_t"):
            value = (row.score or {}).get(name)
            if isinstance(value, (int, float)) and value > best.get(name, float("-inf")):
                best[name] = value
    return best


def _score_html(score: dict[str, Any] | None, best: dict[str, float]) -> str:
    if not score:
        return "–"
    parts = []
    for name, label in (("clip_i", "CLIP-I"), ("clip_t", "CLIP-T")):
        value = score.get(name)
        if isinstance(value, (int, float)):
            shown = f"{label} {value:.3f}"
            parts.append(f"<b>{shown}</b>" if value == best.get(name) else shown)
    return "<br>".join(parts) or "–"


def _short(prompt: str) -> str:
    return prompt if len(prompt) <= HEADING_CHARS else prompt[: HEADING_CHARS - 1].rstrip() + "…"


def _text(value: Any) -> str:
    # Also $ and `: Gradio's HTML component fills its value into a template string.
    return html.escape(str(value)).replace("$", "&#36;").replace("`", "&#96;")


def _file_url(path: Path) -> str:
    # Relative, so a GUI served under a path prefix (a proxy, a share link) still finds it.
    return "gradio_api/file=" + quote(str(path))


def thumbnail(path: Path, folder: Path) -> Path | None:
    """A small JPEG of `path`, made once per version of the image (named by its path, size and
    time); None when the image cannot be read."""
    try:
        stat = path.stat()
        name = hashlib.sha1(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        target = folder / f"{name.hexdigest()[:24]}.jpg"
        if target.is_file():
            return target
        folder.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as image:
            small = image.convert("RGB")
        small.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        partial = target.with_name(f"{target.stem}.{os.getpid()}.part")
        small.save(partial, format="JPEG", quality=85)
        os.replace(partial, target)  # a page never reads half a file
        return target
    except OSError:
        return None


GRID_CSS = """
.ti-grid-note { margin: 4px 0; color: var(--body-text-color-subdued); }
.ti-grid-scroll { max-height: 72vh; overflow: auto; border: 1px solid var(--border-color-primary);
  border-radius: 6px; }
.ti-grid { border-collapse: separate; border-spacing: 0; margin: 0; border: none; width: auto; }
.ti-grid th, .ti-grid td { padding: 3px; border: none; text-align: center; vertical-align: middle;
  border-bottom: 1px solid var(--border-color-primary); }
.ti-grid thead th { position: sticky; top: 0; z-index: 2;
  background: var(--background-fill-secondary); font-weight: normal; max-width: 160px;
  font-size: 0.85em; line-height: 1.2; }
.ti-grid tbody th { position: sticky; left: 0; z-index: 1;
  background: var(--background-fill-primary); white-space: nowrap; text-align: left;
  padding-right: 8px; }
.ti-grid small { display: block; color: var(--body-text-color-subdued); font-weight: normal; }
.ti-grid img { object-fit: contain; display: block; border-radius: 3px;
  background: var(--background-fill-secondary); }
.ti-grid button { padding: 0; border: 2px solid transparent; border-radius: 5px; cursor: pointer;
  background: none; }
.ti-grid button:hover, .ti-grid button:focus-visible { border-color: var(--color-accent); }
.ti-grid tr.ti-not-saved td, .ti-grid tr.ti-pruned td { opacity: 0.55; }
.ti-grid tr.ti-not-saved th, .ti-grid tr.ti-pruned th { font-style: italic; font-weight: normal; }
.ti-grid .ti-empty { color: var(--body-text-color-subdued); }
.ti-grid .ti-score { font-size: 0.85em; white-space: nowrap; text-align: left; }
.ti-grid .ti-suggested { color: var(--color-accent); }
"""
# One listener on the component's root: it outlives every redraw of the table inside it.
GRID_JS = """
element.addEventListener('click', (event) => {
  const cell = event.target.closest('button[data-step]');
  if (cell && element.contains(cell)) {
    trigger('click', {step: Number(cell.dataset.step), prompt: Number(cell.dataset.prompt)});
  }
});
"""


def grid_widget() -> gr.HTML:
    return gr.HTML(
        render(SampleGrid(Path(), [], [], False)), elem_id="sample-grid",
        css_template=GRID_CSS, js_on_load=GRID_JS,
    )  # fmt: skip
