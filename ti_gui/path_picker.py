"""A "Browse" control for every option that names a file or folder: a small folder walker on
this computer (the GUI runs locally, so the server's files are the user's), which fills the
option's textbox; the textbox stays typeable.

`add_path_field(form, name)` places the option's widget (bound by name, as every widget) with
its Browse button and walker under it, and wires them; nothing else needs to know.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from ti_core.config.options import FILE, FOLDER
from ti_core.config.run_config import FIELDS
from ti_gui.fields import Form

# option name -> what it names, and the file endings offered (others are hidden): read from
# the option's declaration (ti_core/config/run_config.py, path= and suffixes=)
PATH_FIELDS: dict[str, tuple[str, tuple[str, ...]]] = {
    name: (info.path, info.suffixes) for name, info in FIELDS.items() if info.path
}
UP = "⬆ .. (up one folder)"
FOLDER_MARK = "📁 "
MAX_ENTRIES = 500


@dataclass
class PathPicker:
    name: str
    textbox: gr.Textbox
    browse: gr.Button
    panel: gr.Group
    where: gr.Markdown
    entries: gr.Dropdown
    use_folder: gr.Button
    close: gr.Button
    folder: gr.State  # the folder the walker shows


def add_path_field(form: Form, name: str) -> PathPicker:
    """The option's textbox, a Browse button under it and the (hidden) folder walker."""
    kind, _ = PATH_FIELDS[name]
    with gr.Column(min_width=240):
        textbox = form.add(name)
        browse = gr.Button("Browse…", size="sm", elem_id=f"browse-{name}")
        with gr.Group(visible=False, elem_id=f"picker-{name}") as panel:
            where = gr.Markdown()
            entries = gr.Dropdown(
                [], label=f"Pick a {kind}", info="A folder opens it; a file is used at once.",
                elem_id=f"picker-entries-{name}",
                allow_custom_value=True,  # its choices change per folder; choose() checks them
            )  # fmt: skip
            with gr.Row():
                use_folder = gr.Button(
                    "Use this folder", size="sm", visible=kind != FILE,
                    elem_id=f"picker-use-{name}",
                )  # fmt: skip
                close = gr.Button("Close", size="sm")
    picker = PathPicker(
        name, textbox, browse, panel, where, entries, use_folder, close, gr.State("")
    )
    wire(picker)
    return picker


def start_folder(value: str) -> Path:
    """Where browsing starts: the value's folder when it names one here, else the nearest
    existing folder above it, else the folder the GUI was started in."""
    value = (value or "").strip()
    if not value or value.startswith("demo:"):
        return Path.cwd()
    path = Path(value).expanduser().absolute()
    if path.is_file():
        return path.parent
    while not path.is_dir() and path != path.parent:
        path = path.parent
    return path if path.is_dir() else Path.cwd()


def list_folder(folder: Path, name: str) -> list[str]:
    """The walker's choices: up, the subfolders, then the files this option can name."""
    kind, suffixes = PATH_FIELDS[name]
    try:
        children = sorted(folder.iterdir(), key=lambda p: p.name.lower())
    except OSError:
        children = []
    visible = [child for child in children if not child.name.startswith(".")]
    folders = [FOLDER_MARK + child.name for child in visible if _is_dir(child)]
    files = []
    if kind != FOLDER:
        files = [
            child.name
            for child in visible
            if not _is_dir(child) and (not suffixes or child.suffix.lower() in suffixes)
        ]
    up = [UP] if folder.parent != folder else []
    return up + (folders + files)[:MAX_ENTRIES]


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def show_folder(folder: Path, name: str) -> dict[str, Any]:
    """The walker's parts for `folder` (keys: where, entries, folder)."""
    kind, suffixes = PATH_FIELDS[name]
    files = f" ({', '.join(suffixes)} files shown)" if suffixes and kind != FOLDER else ""
    return {
        "where": f"**{folder}**{files}",
        "entries": gr.update(choices=list_folder(folder, name), value=None),
        "folder": str(folder),
    }


def choose(choice: str | None, folder: str, name: str) -> tuple[str | None, Path]:
    """A choice in `folder`: (the path to fill in, or None when it opened a folder; the folder
    shown next)."""
    current = Path(folder)
    if not choice:
        return None, current
    if choice == UP:
        return None, current.parent
    if choice.startswith(FOLDER_MARK):
        return None, current / choice.removeprefix(FOLDER_MARK)
    return str(current / choice), current


def wire(picker: PathPicker) -> None:
    parts = [picker.where, picker.entries, picker.folder]
    private = {"api_visibility": "private", "show_progress": "hidden"}

    def shown(folder: Path) -> list[Any]:
        values = show_folder(folder, picker.name)
        return [values["where"], values["entries"], values["folder"]]

    def open_panel(value: str) -> list[Any]:
        return [gr.update(visible=True), *shown(start_folder(value))]

    def pick(choice: str | None, folder: str) -> list[Any]:
        path, next_folder = choose(choice, folder, picker.name)
        if path is not None:
            return [path, gr.update(visible=False), *shown(next_folder)]
        return [gr.update(), gr.update(visible=True), *shown(next_folder)]

    def use_folder(folder: str) -> list[Any]:
        return [folder or os.getcwd(), gr.update(visible=False)]

    picker.browse.click(
        open_panel, inputs=picker.textbox, outputs=[picker.panel, *parts], **private
    )
    picker.entries.select(  # once per choice (.input also fires when the box loses focus)
        pick,
        inputs=[picker.entries, picker.folder],
        outputs=[picker.textbox, picker.panel, *parts],
        **private,
    )
    picker.use_folder.click(
        use_folder, inputs=picker.folder, outputs=[picker.textbox, picker.panel], **private
    )
    picker.close.click(lambda: gr.update(visible=False), outputs=picker.panel, **private)


def add_rest(form: Form, section: str) -> None:
    """`form.add_rest(section)`, with a Browse picker under every path option among them, so a
    new file or folder option gets its picker wherever it lands."""
    for name, info in FIELDS.items():
        if info.section == section and info.path and name not in form.widgets:
            add_path_field(form, name)
    form.add_rest(section)
