"""One-click fixes for what the dataset doctor finds about the token: put it in front of the
captions that lack it, or write a caption file with it for images that have none. Every
original is backed up first (`<dataset>/.ti-caption-backup/<time>/`) and can be put back.

Torch-free: the GUI applies and undoes fixes in its own process. Planning needs the run's
datasets, which may build the demo, so the GUI runs that part as
`python -m ti_core.cli.caption_fix --config CONFIG.toml` (JSON on stdout).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ti_core.atomic import write_bytes_atomic
from ti_core.data.captions import caption_has_token, prepend_token
from ti_core.data.sources import _caption_candidates, discover_images, parse_folder_name
from ti_core.data.spec import DatasetSpec, ImageEntry, SubsetSpec
from ti_core.errors import DatasetError

BACKUP_DIR = ".ti-caption-backup"  # hidden: sd-scripts' folder scan and image glob skip it
MANIFEST = "manifest.json"
ADD_TOKEN, NEW_FILE = "add_token", "new_caption_file"


@dataclass
class CaptionChange:
    """One caption file to rewrite (`before` is its text) or to create (`before` is None)."""

    kind: str  # ADD_TOKEN | NEW_FILE
    caption_path: str
    image_path: str
    before: str | None
    after: str


@dataclass
class FixPlan:
    """What the fixes would change in the run's datasets, and what they cannot fix."""

    token_string: str
    root: str  # the folder the backup goes into (the datasets' common folder)
    changes: list[CaptionChange] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "path: why" for captions left alone
    notes: list[str] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[CaptionChange]:
        return [change for change in self.changes if change.kind == kind]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FixPlan:
        changes = [CaptionChange(**change) for change in data.get("changes", [])]
        return cls(data["token_string"], data["root"], changes, list(data.get("skipped", [])),
                   list(data.get("notes", [])))  # fmt: skip


def plan_fixes(
    specs: Sequence[DatasetSpec], token_string: str, entries: Iterable[ImageEntry] | None = None
) -> FixPlan:
    """The caption fixes for every training image whose caption lacks the token, as the doctor
    reads captions (prefix and suffix included). Regularization images are left alone: their
    captions should name only the class."""
    if entries is None:
        entries = [entry for spec in specs for entry in discover_images(spec)[0]]
    folders = [s.image_dir for spec in specs for s in spec.subsets if s.image_dir and not s.is_reg]
    plan = FixPlan(token_string, _common_folder(folders))
    if not token_string:
        return plan
    keep_tokens, seen = set(), set()
    for entry in entries:
        subset = entry.subset
        if subset.is_reg or caption_has_token(_full_caption(entry), token_string):
            continue
        if entry.caption_source == "metadata":
            plan.skipped.append(f"{entry.path}: its caption is in {subset.metadata_file}")
            continue
        change = _change_for(entry, token_string)
        if isinstance(change, str):
            plan.skipped.append(f"{entry.path}: {change}")
            continue
        if change.caption_path in seen:  # one caption file for several face crops
            continue
        seen.add(change.caption_path)
        plan.changes.append(change)
        if subset.keep_tokens and not subset.keep_tokens_separator:
            keep_tokens.add(subset.keep_tokens)
    for count in sorted(keep_tokens):
        plan.notes.append(
            f"keep_tokens = {count}: the token becomes the first tag, so the first {count} tags "
            f"kept in place are now the token and {count - 1} of the old ones; set keep_tokens "
            f"= {count + 1} to keep the same tags as before."
        )
    return plan


def _full_caption(entry: ImageEntry) -> str:
    parts = (entry.subset.caption_prefix, entry.caption, entry.subset.caption_suffix)
    return " ".join(part for part in parts if part)


def _separator(subset: SubsetSpec) -> str:
    """sd-scripts style "token, rest": the subset's caption separator and a space."""
    return (subset.caption_separator.strip() or ",") + " "


def _change_for(entry: ImageEntry, token_string: str) -> CaptionChange | str:
    """The change that puts the token into this image's caption, or why there is none."""
    separator = _separator(entry.subset)
    if entry.caption_source == "file":
        path = next(p for p in _caption_candidates(entry.path, entry.subset.caption_extension)
                    if p.is_file())  # fmt: skip
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError:
            return "its caption file is not UTF-8 (save it as UTF-8 first)"
        lines = text.splitlines(keepends=True) or [""]
        first = lines[0]
        ending = first[len(first.rstrip("\r\n")) :]
        after = prepend_token(first.strip(), token_string, separator) + ending + "".join(lines[1:])
        return CaptionChange(ADD_TOKEN, str(path), str(entry.path), text, after)
    path = entry.path.with_name(entry.path.stem + entry.subset.caption_extension)
    class_tokens = entry.subset.class_tokens.strip()
    after = prepend_token(class_tokens, token_string, separator) if class_tokens else token_string
    return CaptionChange(NEW_FILE, str(path), str(entry.path), None, after + "\n")


def _common_folder(folders: list[str]) -> str:
    """The datasets' folder: train_data_dir for N_name folders, else the image folders' own."""
    if not folders:
        return ""
    common = Path(os.path.commonpath([str(Path(folder).resolve()) for folder in folders]))
    if parse_folder_name(common.name) is not None and common.parent != common:
        common = common.parent
    return str(common)


# ---- applying and undoing -------------------------------------------------------------------


def apply_fixes(plan: FixPlan, kinds: Iterable[str] = (ADD_TOKEN, NEW_FILE)) -> Path | None:
    """Make the plan's changes of `kinds`, each file written atomically, after backing up every
    original. A caption changed since the plan was made is left alone. Returns the backup
    folder (for `undo_fixes`), or None when nothing was changed."""
    kinds = set(kinds)
    todo = [c for c in plan.changes if c.kind in kinds and _unchanged_since_plan(c)]
    if not todo:
        return None
    root = Path(plan.root)
    backup = _new_backup_folder(root)
    manifest = {"token_string": plan.token_string, "root": str(root), "time": time.time(),
                "undone": False, "changes": [asdict(change) for change in todo]}  # fmt: skip
    for change in todo:  # every original is safe before the first file changes
        if change.before is not None:
            target = backup / _relative(Path(change.caption_path), root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(change.caption_path, target)
    manifest_text = json.dumps(manifest, indent=2, ensure_ascii=False)
    write_bytes_atomic(backup / MANIFEST, manifest_text.encode())
    for change in todo:
        write_bytes_atomic(Path(change.caption_path), change.after.encode("utf-8"))
    return backup


def undo_fixes(backup: str | Path) -> list[str]:
    """Put back what `apply_fixes` changed: the originals from the backup, and created caption
    files deleted. A file edited since the fix is left as it is and named in the result."""
    backup = Path(backup)
    manifest = json.loads((backup / MANIFEST).read_text(encoding="utf-8"))
    if manifest.get("undone"):
        raise DatasetError(f"{backup}: these caption fixes were undone already.")
    root = Path(manifest["root"])
    left: list[str] = []
    for data in manifest["changes"]:
        change = CaptionChange(**data)
        path = Path(change.caption_path)
        if _read_text(path) != change.after:
            left.append(f"{path}: changed since the fix, left as it is")
        elif change.before is None:
            path.unlink()
        else:
            original = (backup / _relative(path, root)).read_bytes()
            write_bytes_atomic(path, original)
    manifest["undone"] = True
    manifest_text = json.dumps(manifest, indent=2, ensure_ascii=False)
    write_bytes_atomic(backup / MANIFEST, manifest_text.encode())
    return left


def latest_backup(root: str | Path) -> Path | None:
    """The newest backup under `root` that has not been undone."""
    folder = Path(root) / BACKUP_DIR
    if not folder.is_dir():
        return None
    for backup in sorted(folder.iterdir(), reverse=True):
        try:
            manifest = json.loads((backup / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not manifest.get("undone"):
            return backup
    return None


def _unchanged_since_plan(change: CaptionChange) -> bool:
    return _read_text(Path(change.caption_path)) == change.before


def _read_text(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        return "\0unreadable"


def _relative(path: Path, root: Path) -> Path:
    try:
        return path.resolve().relative_to(root.resolve())
    except ValueError:  # outside the root (a dataset TOML's scattered folders): keep it whole
        return Path(*path.resolve().parts[1:])


def _new_backup_folder(root: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for index in range(1000):
        folder = root / BACKUP_DIR / (stamp if index == 0 else f"{stamp}-{index}")
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
    raise DatasetError(f"cannot make a backup folder in {root / BACKUP_DIR}")
