"""What the Dataset tab's gallery shows: the images a run trains on, read from the form's dataset
settings as the engine reads them (ti_core.data.sources), a page of small thumbnails at a time,
each with its caption (the token highlighted), size, bucket and repeats; and a caption edited by
hand, saved atomically after its original is backed up as the caption fixes back up
(ti_core.data.caption_fix), with its Undo. No Gradio here: dataset_tab.py draws it."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import html
import io
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps

from ti_core.config.run_config import Config
from ti_core.data import caption_fix, sources
from ti_core.data.buckets import BucketRules
from ti_core.data.captions import template_captions
from ti_core.data.images import _to_rgb, image_size
from ti_core.data.spec import DatasetSpec, ImageEntry
from ti_core.embeddings.specs import embedding_specs
from ti_core.errors import DatasetError, TiError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PAGE_SIZE = 48  # thumbnails a page shows; a folder of 5000 is never drawn at once
THUMBNAIL_PX = 192  # longest side: sharp on a 2x screen at the card's ~150 px
THUMBNAIL_DIR = Path(tempfile.gettempdir()) / "ti-trainer-thumbnails"
DEMO_TIMEOUT_S = 300
DEMO_CACHE_VARIABLES = ("TI_TRAINER_CACHE", "XDG_CACHE_HOME")  # they move the demo's folder
EDIT = "edit_caption"  # a caption edited by hand, as its backup's manifest names the change
# The form's sections the gallery reads: the [dataset] options and the token strings.
SECTIONS = ("dataset", "token")
MAX_PROBLEMS_SHOWN = 5


@dataclass
class Listing:
    """Every image of the form's datasets, as training would find them."""

    key: str  # the settings it was read with (a changed form reads again)
    entries: list[ImageEntry] = field(default_factory=list)
    dataset_of: list[int] = field(default_factory=list)  # each entry's dataset, in `rules`
    rules: list[BucketRules | str] = field(default_factory=list)  # str: why no buckets
    token_strings: list[str] = field(default_factory=list)
    template: str = ""  # use_object/style_template: one of the templates training uses instead
    no_token: str = "no token"  # what a training caption without the token is marked with
    problems: list[str] = field(default_factory=list)
    error: str = ""  # why nothing could be listed


def settings_key(config: Config) -> str:
    """What a listing depends on; another key means the form changed and must be read again."""
    sections = [dataclasses.asdict(getattr(config, name)) for name in SECTIONS]
    return json.dumps(sections, sort_keys=True, default=str)


def list_images(config: Config) -> Listing:
    """The images and captions of `config`'s datasets; reading problems in `problems`."""
    listing = Listing(settings_key(config))
    listing.token_strings = [e.token_string for e in embedding_specs(config) if e.token_string]
    data, token = config.dataset, (listing.token_strings or ["TOKEN"])[0]
    if data.use_object_template or data.use_style_template:
        listing.template = template_captions(token, data.use_style_template)[0]
    if data.add_missing_token:
        listing.no_token = "no token: put in front in training (add_missing_token)"
    try:
        specs = dataset_specs(config)
    except TiError as error:
        listing.error = str(error)
        return listing
    for number, spec in enumerate(specs):
        entries, problems = sources.discover_images(spec)
        listing.entries += entries
        listing.dataset_of += [number] * len(entries)
        for problem in problems:
            where = f" `{problem.path}`" if problem.path else ""
            listing.problems.append(f"{problem.severity}: {problem.message}{where}")
        try:
            listing.rules.append(BucketRules(spec))
        except DatasetError as error:
            listing.rules.append(str(error))
    return listing


def dataset_specs(config: Config) -> list[DatasetSpec]:
    """The datasets the run would train on; a demo dataset is found by a child process
    (building it needs torch, which this process never loads)."""
    return sources.run_datasets(config.dataset, demo_dataset_folder)


_demo_folders: dict[tuple[str, ...], str] = {}
_DEMO_CHILD = """import sys
from ti_core.data.run_data import resolve_demo_dataset
from ti_core.errors import TiError
try:
    print(resolve_demo_dataset(sys.argv[1]))
except TiError as error:
    sys.exit(f"error: {error}")
"""


def demo_dataset_folder(train_data_dir: str) -> str:
    """demo:FAMILY -> the demo's dataset folder, as the engine resolves (and on first use
    builds) it; remembered for this GUI process and demo cache."""
    if not train_data_dir.startswith("demo:"):
        return train_data_dir
    key = (train_data_dir, *(os.environ.get(name, "") for name in DEMO_CACHE_VARIABLES))
    if key in _demo_folders and Path(_demo_folders[key]).is_dir():
        return _demo_folders[key]
    command = [sys.executable, "-c", _DEMO_CHILD, train_data_dir]
    try:
        done = subprocess.run(
            command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=DEMO_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        raise DatasetError(
            f"train_data_dir = {train_data_dir}: building the demo took over {DEMO_TIMEOUT_S} s."
        ) from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        reason = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise DatasetError(f"train_data_dir = {train_data_dir}: {reason.removeprefix('error: ')}")
    _demo_folders[key] = lines[-1]
    return lines[-1]


# ---- a page ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    number: int  # from 0
    count: int  # pages in all (at least 1)
    start: int  # the listing's index of its first image
    stop: int  # one past its last
    total: int

    @property
    def label(self) -> str:
        return f"images {self.start + 1}-{self.stop} of {self.total}" if self.total else "no images"


def page_of(total: int, number: int, size: int = PAGE_SIZE) -> Page:
    """Page `number` (clamped to the pages there are) of a listing of `total` images."""
    count = max(1, -(-total // size))
    number = min(max(number, 0), count - 1)
    start = number * size
    return Page(number, count, start, min(start + size, total), total)


def summary_markdown(listing: Listing) -> str:
    """Each folder or subset with its images and repeats; what training does with captions."""
    if listing.error:
        return f"**Cannot show the images:** {listing.error}"
    lines, counted = [], {}
    for entry in listing.entries:
        counted.setdefault(id(entry.subset), [entry.subset, 0])[1] += 1
    for subset, count in counted.values():
        kind = "regularization" if subset.is_reg else "training"
        lines.append(
            f"- {subset.where or subset.image_dir} ({kind}): {count} images x "
            f"{subset.num_repeats} repeats = {count * subset.num_repeats} per epoch"
        )
    if listing.template:
        lines.append(f"- use_object_template / use_style_template is on: training reads no "
                     f"caption, it uses templates such as '{listing.template}'.")  # fmt: skip
    shown = listing.problems[:MAX_PROBLEMS_SHOWN]
    lines += [f"- {line}" for line in shown]
    if len(listing.problems) > len(shown):
        lines.append(f"- ... and {len(listing.problems) - len(shown)} more (Check dataset)")
    return "\n".join(lines)


def page_html(listing: Listing, page: Page, cache_dir: Path = THUMBNAIL_DIR) -> str:
    """The page's cards: thumbnail, file name, size -> bucket, repeats, caption."""
    cards = []
    for index in range(page.start, page.stop):
        entry = listing.entries[index]
        refresh_caption(entry)
        name = html.escape(entry.path.name)
        try:
            data = base64.b64encode(thumbnail(entry.path, cache_dir)).decode("ascii")
            picture = f'<img src="data:image/jpeg;base64,{data}" alt="{name}">'
        except (OSError, TiError, ValueError):
            picture = '<span class="ti-no-image ti-badge">cannot read</span>'
        cards.append(
            f'<button class="ti-card" data-index="{index}" title="{html.escape(str(entry.path))}">'
            f'{picture}<span class="ti-card-name">{name}</span>'
            f'<span class="ti-card-facts">{html.escape(facts_text(listing, index))}</span>'
            f'<span class="ti-card-caption">{caption_html(listing, entry)}</span></button>'
        )
    if not cards:
        return "<p>No images to show.</p>"
    return f'<div class="ti-gallery">{"".join(cards)}</div>'


def refresh_caption(entry: ImageEntry) -> None:
    """Read the caption again: it may have been edited or fixed since the listing was made."""
    if entry.caption_source != "metadata":
        caption = sources.read_caption(entry.path, entry.subset, [])
        entry.caption = entry.subset.class_tokens if caption is None else caption
        tokens_source = "class_tokens" if entry.caption else "none"
        entry.caption_source = tokens_source if caption is None else "file"


def facts_text(listing: Listing, index: int) -> str:
    """Size -> bucket · repeats ("96x64 -> 64x64 · x10", "· reg" added), or why not known."""
    entry = listing.entries[index]
    subset = entry.subset
    tail = f" · x{subset.num_repeats}" + (" · reg" if subset.is_reg else "")
    try:
        if entry.size is None:
            entry.size = image_size(entry.path)
    except DatasetError:
        return "cannot read the image" + tail
    width, height = entry.size
    rules = listing.rules[listing.dataset_of[index]]
    if isinstance(rules, str):
        return f"{width}x{height} · no bucket (see the summary)" + tail
    try:
        bucket = rules.choose(entry.size).bucket
    except DatasetError:
        return f"{width}x{height} · fits no bucket" + tail
    return f"{width}x{height} -> {bucket[0]}x{bucket[1]}" + tail


def caption_html(listing: Listing, entry: ImageEntry) -> str:
    """The caption as training reads it (prefix and suffix muted), the token highlighted; a
    missing caption file, and a training caption without the token, said as such."""
    subset, tokens = entry.subset, listing.token_strings
    caption = highlight(entry.caption, tokens)
    if entry.caption_source in ("class_tokens", "none"):
        what = f"class tokens: {caption}" if entry.caption else "an empty caption"
        caption = f'<span class="ti-missing">no caption file</span> (trains with {what})'
    elif not entry.caption:
        caption = '<span class="ti-missing">empty caption file</span>'
    parts = [caption]
    if subset.caption_prefix:
        parts.insert(0, f'<span class="ti-muted">{highlight(subset.caption_prefix, tokens)}</span>')
    if subset.caption_suffix:
        parts.append(f'<span class="ti-muted">{highlight(subset.caption_suffix, tokens)}</span>')
    full = " ".join(p for p in (subset.caption_prefix, entry.caption, subset.caption_suffix) if p)
    lacks = tokens and not any(token in full for token in tokens)  # sd-scripts: a substring
    if lacks and not subset.is_reg and not listing.template:
        parts.append(f'<span class="ti-badge">{listing.no_token}</span>')
    return " ".join(parts)


def highlight(text: str, token_strings: list[str]) -> str:
    """`text` as HTML with each token string marked (.ti-new, as the Token tab marks it). Found
    as training finds it: the exact string anywhere, "mytoken" in "mytokens" too."""
    tokens = sorted({t for t in token_strings if t}, key=len, reverse=True)
    if not tokens or not text:
        return html.escape(text)
    pieces = re.split(f"({'|'.join(re.escape(t) for t in tokens)})", text)
    return "".join(
        f'<span class="ti-new">{html.escape(piece)}</span>' if number % 2 else html.escape(piece)
        for number, piece in enumerate(pieces)
    )


def thumbnail(path: Path, cache_dir: Path = THUMBNAIL_DIR) -> bytes:
    """A small JPEG of the image as training sees it (upright, transparency on white), made
    once per file version and kept in `cache_dir`."""
    stat = path.stat()
    version = f"{path.resolve()}|{stat.st_mtime_ns}|{stat.st_size}|{THUMBNAIL_PX}"
    cached = cache_dir / f"{hashlib.sha1(version.encode()).hexdigest()}.jpg"
    if cached.is_file():
        return cached.read_bytes()
    with Image.open(path) as image:
        image.draft("RGB", (THUMBNAIL_PX, THUMBNAIL_PX))  # a JPEG decodes at 1/2..1/8 size
        small = _to_rgb(ImageOps.exif_transpose(image))
    small.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=85)
    cache_dir.mkdir(parents=True, exist_ok=True)
    temp = cache_dir / f".{cached.name}.{os.getpid()}.tmp"  # a cache: no fsync needed
    temp.write_bytes(buffer.getvalue())
    os.replace(temp, cached)
    return buffer.getvalue()


# ---- one image in the editor -----------------------------------------------------------------


@dataclass
class CaptionFile:
    """The caption file of an image: the one that holds its caption, or the one Save makes."""

    path: str
    text: str | None  # its contents; None when there is no file yet
    why_not_editable: str = ""


def caption_file(entry: ImageEntry) -> CaptionFile:
    if entry.caption_source == "metadata":
        source = entry.subset.metadata_file
        return CaptionFile("", None, f"its caption is in {source}; edit it there.")
    candidates = sources._caption_candidates(entry.path, entry.subset.caption_extension)
    path = next((p for p in candidates if p.is_file()), candidates[0])
    try:
        return CaptionFile(str(path), path.read_bytes().decode("utf-8-sig"))
    except FileNotFoundError:
        return CaptionFile(str(path), None)
    except UnicodeDecodeError:
        return CaptionFile(str(path), None, f"{path} is not UTF-8; save it as UTF-8 first.")


def details_markdown(listing: Listing, index: int) -> str:
    entry = listing.entries[index]
    file = caption_file(entry)
    lines = [f"**{entry.path.name}** · {facts_text(listing, index)}", f"in `{entry.path.parent}`"]
    if file.why_not_editable:
        lines.append(f"Not editable here: {file.why_not_editable}")
    elif file.text is None:
        lines.append(f"No caption file yet: Save writes {Path(file.path).name}.")
    else:
        lines.append(f"Caption file: {Path(file.path).name}")
        several = sum(1 for line in file.text.splitlines() if line.strip()) > 1
        if several and not entry.subset.enable_wildcard:
            lines.append("Only its first line is used in training (enable_wildcard: all).")
    return "\n\n".join(lines)


def save_caption(entry: ImageEntry, before: str | None, text: str) -> tuple[bool, str]:
    """Write `text` as the image's caption file (atomically; the original backed up first).
    `before`: the file as the editor opened it (None: no file); a file changed on disk since
    is left alone. Returns (whether it was written, what happened for the user)."""
    file = caption_file(entry)
    if file.why_not_editable:
        return False, f"**Not saved:** {file.why_not_editable}"
    if not text.strip():
        return False, "**Not saved:** an empty caption file stops training; write a caption."
    ending = "\r\n" if before and "\r\n" in before else "\n"
    after = text.strip().replace("\r\n", "\n").replace("\n", ending) + ending
    if after == before:
        return False, "Nothing to save: the caption is unchanged."
    change = caption_fix.CaptionChange(EDIT, file.path, str(entry.path), before, after)
    backup = caption_fix.apply_fixes(caption_fix.FixPlan("", backup_root(entry), [change]), [EDIT])
    name = Path(file.path).name
    if backup is None:
        return False, f"**Not saved:** {name} changed on disk since it was opened."
    if before is None:
        return True, f"**Saved** a new caption file, {name} (Undo deletes it)."
    return True, f"**Saved** {name}; the original is in {caption_fix.BACKUP_DIR}/{backup.name}."


def undo_caption(entry: ImageEntry) -> str:
    """Put back the caption file as it was before its last Save here (a new file: delete it)."""
    file = caption_file(entry)
    backup = last_edit(backup_root(entry), file.path) if file.path else None
    if backup is None:
        return "Nothing to undo for this caption."
    left = caption_fix.undo_fixes(backup)
    if left:
        return f"**Not undone:** {left[0]}."
    return f"**Undone:** {Path(file.path).name} is back as it was."


def backup_root(entry: ImageEntry) -> str:
    """Where a caption's backups go: the dataset folder the caption fixes back up into."""
    return caption_fix._common_folder([entry.subset.image_dir or str(entry.path.parent)])


def last_edit(root: str, caption_path: str) -> Path | None:
    """The newest Save of this caption file not yet undone (a backup of one change)."""
    folder = Path(root) / caption_fix.BACKUP_DIR
    if not folder.is_dir():
        return None
    for backup in sorted(folder.iterdir(), reverse=True):
        try:
            manifest = json.loads((backup / caption_fix.MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        changes = manifest.get("changes", [])
        mine = len(changes) == 1 and changes[0].get("kind") == EDIT
        if mine and changes[0].get("caption_path") == caption_path and not manifest.get("undone"):
            return backup
    return None
