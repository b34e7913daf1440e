"""Dataset tab: where the images are and how they are read; "Check dataset" runs the engine's
dataset doctor in a child process (it opens every image) and shows its report, with one-click
fixes for captions that lack the token (ti_core.data.caption_fix) and their Undo."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from ti_core.config.run_config import Config
from ti_core.config.toml_io import config_to_toml
from ti_core.data.caption_fix import (
    ADD_TOKEN,
    MANIFEST,
    NEW_FILE,
    FixPlan,
    apply_fixes,
    latest_backup,
    undo_fixes,
)
from ti_core.errors import TiError
from ti_gui.fields import Form
from ti_gui.path_picker import add_path_field, add_rest
from ti_gui.tabs import dataset_gallery_panel

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CHECK_TIMEOUT_S = 300
MAX_PROBLEMS_SHOWN = 30
MAX_FIXES_SHOWN = 20


@dataclass
class DatasetTab:
    check: gr.Button
    report: gr.Markdown
    fixes: gr.Markdown  # the captions a fix would change, and what happened
    add_token: gr.Button  # "Add <token> to these N captions"
    new_files: gr.Button  # "Write a caption file with <token> for these M images"
    undo: gr.Button
    plan: gr.State  # FixPlan.to_dict() of the last check, or None
    gallery: dataset_gallery_panel.GalleryPanel  # the images and captions


def run_doctor(config: Config) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `python -m ti_core check-dataset --json` on `config`."""
    return _run_on_config(config, ["ti_core", "check-dataset", "--json"])


def run_fix_plan(config: Config) -> FixPlan | str:
    """The caption fixes for `config`'s datasets (a child process: a demo dataset may have to be
    built first), or why there are none."""
    code, stdout, stderr = _run_on_config(config, ["ti_core.cli.caption_fix"])
    if code != 0:
        lines = stderr.strip().splitlines()
        return lines[-1].removeprefix("error: ") if lines else f"exit code {code}"
    try:
        return FixPlan.from_dict(json.loads(stdout))
    except (ValueError, KeyError, TypeError):
        return "the caption check gave no answer"


def _run_on_config(config: Config, module_args: list[str]) -> tuple[int, str, str]:
    with tempfile.TemporaryDirectory(prefix="ti-check-") as folder:
        path = Path(folder) / "config.toml"
        path.write_text(config_to_toml(config), encoding="utf-8")
        command = [sys.executable, "-m", module_args[0], *module_args[1:], "--config", str(path)]
        try:
            done = subprocess.run(
                command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=CHECK_TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            return -1, "", f"the dataset check took longer than {CHECK_TIMEOUT_S} s."
    return done.returncode, done.stdout, done.stderr


def report_markdown(code: int, stdout: str, stderr: str) -> str:
    if code not in (0, 1):
        message = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit code {code}"
        return f"**Cannot check the dataset:** {message.removeprefix('error: ')}"
    try:
        report = json.loads(stdout)
    except ValueError:
        details = f"\n\n```\n{stderr[-2000:]}\n```" if stderr.strip() else ""
        return f"**The dataset check gave no report** (exit code {code}).{details}"
    return format_report(report)


def format_report(report: dict[str, Any]) -> str:
    verdict = "Ready to train." if report.get("ok") else "The data has errors (see below)."
    lines = [f"**{verdict}** Steps per epoch: **{report.get('steps_per_epoch', '?')}**"]
    for dataset in report.get("datasets", []):
        resolution = "x".join(str(side) for side in dataset.get("resolution", []))
        lines.append(
            f"\n**{dataset.get('where', 'dataset')}** — {resolution}, batch size "
            f"{dataset.get('batch_size')}, {dataset.get('train_images_per_epoch')} training "
            f"images per epoch ({dataset.get('reg_images_per_epoch', 0)} regularization), "
            f"{dataset.get('steps_per_epoch')} steps per epoch"
        )
        for subset in dataset.get("subsets", []):
            lines.append(
                f"- {subset.get('where')}: {subset.get('images')} images x "
                f"{subset.get('num_repeats')} repeats; captions missing the token: "
                f"{subset.get('missing_token', 0)}"
            )
        buckets = dataset.get("buckets") or {}
        if buckets:
            shown = ", ".join(f"{size}: {count}" for size, count in buckets.items())
            lines.append(f"- buckets: {shown}")
    for kind in ("errors", "warnings"):
        problems = report.get(kind, [])
        for problem in problems[:MAX_PROBLEMS_SHOWN]:
            lines.append(f"- **{kind[:-1]}:** {problem_text(problem)}")
        if len(problems) > MAX_PROBLEMS_SHOWN:
            lines.append(f"- ... and {len(problems) - MAX_PROBLEMS_SHOWN} more {kind}")
    return "\n".join(lines)


def problem_text(problem: Any) -> str:
    if not isinstance(problem, dict):
        return str(problem)
    text = str(problem.get("message", ""))
    if problem.get("path"):
        text += f" (`{problem['path']}`)"
    if problem.get("detail"):
        text += f": {problem['detail']}"
    if problem.get("hint"):
        text += f". {problem['hint']}"
    return text


def build(form: Form) -> DatasetTab:
    with gr.Row():
        add_path_field(form, "train_data_dir")
        add_path_field(form, "dataset_config")
    with gr.Row():
        form.add("resolution")
        form.add("train_batch_size")
        form.add("caption_extension")
    with gr.Row():
        form.add("enable_bucket")
        form.add("min_bucket_reso")
        form.add("max_bucket_reso")
        form.add("bucket_reso_steps")
    with gr.Row():
        form.add("cache_latents")
        form.add("cache_latents_to_disk")
        form.add("use_object_template")
        form.add("use_style_template")
        form.add("add_missing_token")
    with gr.Accordion("Captions and more dataset options", open=False):
        add_path_field(form, "reg_data_dir")
        add_path_field(form, "in_json")
        add_rest(form, "dataset")
    check = gr.Button("Check dataset")
    report = gr.Markdown(elem_id="dataset-report")
    fixes = gr.Markdown(elem_id="dataset-fixes")
    with gr.Row():
        add_token = gr.Button(visible=False, elem_id="fix-add-token")
        new_files = gr.Button(visible=False, elem_id="fix-new-files")
        undo = gr.Button("Undo the last caption fix", visible=False, elem_id="fix-undo")
    panel = dataset_gallery_panel.build()
    return DatasetTab(check, report, fixes, add_token, new_files, undo, gr.State(None), panel)


def fixes_markdown(plan: FixPlan | str, done: str = "") -> str:
    """The captions the fix buttons would change, the ones they cannot, and the last result."""
    lines = [done] if done else []
    if isinstance(plan, str):
        return "\n\n".join([*lines, f"**Caption fixes unavailable:** {plan}"])
    token = plan.token_string
    groups = (
        (ADD_TOKEN, f"**Captions without the token `{token}`**"),
        (NEW_FILE, "**Images without a caption file** (their caption would be the folder's "
                   "class tokens, which lack the token). The fix writes one next to each image; "
                   "or turn on use_object_template / use_style_template to train on templates "
                   "and ignore captions"),
    )  # fmt: skip
    for kind, title in groups:
        changes = plan.of_kind(kind)
        if not changes:
            continue
        lines.append(f"{title} ({len(changes)}):")
        shown = [f'- `{c.caption_path}` → "{_first_line(c.after)}"' for c in changes]
        lines.append("\n".join(shown[:MAX_FIXES_SHOWN]))
        if len(changes) > MAX_FIXES_SHOWN:
            lines.append(f"... and {len(changes) - MAX_FIXES_SHOWN} more")
    lines += [f"- not fixable here: {reason}" for reason in plan.skipped[:MAX_FIXES_SHOWN]]
    lines += [f"- note: {note}" for note in plan.notes]
    if not plan.changes and not plan.skipped and plan.token_string and not done:
        lines.append(f"Every training caption contains `{token}`.")
    return "\n\n".join(lines)


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""


def fix_buttons(plan: FixPlan | str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(add token, new files, undo): each shown only when it has something to do."""
    if isinstance(plan, str):
        return (gr.update(visible=False),) * 3  # type: ignore[return-value]
    count, new = len(plan.of_kind(ADD_TOKEN)), len(plan.of_kind(NEW_FILE))
    token = plan.token_string
    add = gr.update(value=f"Add {token} to these {count} captions", visible=count > 0)
    write = gr.update(
        value=f"Write a caption file with {token} for these {new} images", visible=new > 0
    )
    can_undo = bool(plan.root) and latest_backup(plan.root) is not None
    return add, write, gr.update(visible=can_undo)


def wire(tab: DatasetTab, form: Form) -> None:
    panel = [tab.report, tab.fixes, tab.add_token, tab.new_files, tab.undo, tab.plan]

    def check(data: dict, done: str = "") -> dict[Any, Any]:
        result = form.collect(data)
        if result.config is None:
            hidden = dict(zip(panel[2:5], fix_buttons(""), strict=True))
            return {tab.report: "Fix the config first.\n\n" + result.message(),
                    tab.fixes: done, tab.plan: None, **hidden}  # fmt: skip
        with ThreadPoolExecutor(2) as pool:  # two child processes side by side
            doctor = pool.submit(run_doctor, result.config)
            plan = run_fix_plan(result.config)
            report = report_markdown(*doctor.result())
        add, write, undo = fix_buttons(plan)
        return {
            tab.report: report,
            tab.fixes: fixes_markdown(plan, done),
            tab.add_token: add,
            tab.new_files: write,
            tab.undo: undo,
            tab.plan: plan.to_dict() if isinstance(plan, FixPlan) else None,
        }

    def check_dataset(data: dict) -> dict[Any, Any]:
        return check(data)

    def fix(kind: str):
        def apply_fix(data: dict) -> dict[Any, Any]:
            if not data[tab.plan]:
                return check(data, "**Check the dataset first.**")
            plan = FixPlan.from_dict(data[tab.plan])
            try:
                backup = apply_fixes(plan, [kind])
            except (OSError, TiError) as error:
                return check(data, f"**Could not change the captions:** {error}")
            if backup is None:
                return check(data, "**Nothing changed:** the captions changed since the check.")
            count = len(json.loads((backup / MANIFEST).read_text())["changes"])
            what = "captions now start with" if kind == ADD_TOKEN else "new caption files hold"
            return check(
                data, f"**Done:** {count} {what} `{plan.token_string}`. Originals in `{backup}`."
            )

        apply_fix.__name__ = f"apply_fix_{kind}"
        return apply_fix

    def undo_fix(data: dict) -> dict[Any, Any]:
        plan = FixPlan.from_dict(data[tab.plan]) if data[tab.plan] else None
        backup = latest_backup(plan.root) if plan and plan.root else None
        if backup is None:
            return check(data, "**Nothing to undo.**")
        try:
            left = undo_fixes(backup)
        except (OSError, TiError, ValueError) as error:
            return check(data, f"**Could not undo:** {error}")
        kept = "".join(f"\n- {line}" for line in left)
        return check(data, f"**Undone:** the captions are back as they were.{kept}")

    inputs = form.inputs() | {tab.plan}
    private = {"api_visibility": "private"}
    tab.check.click(check_dataset, inputs=inputs, outputs=panel, api_name="check_dataset")
    tab.add_token.click(fix(ADD_TOKEN), inputs=inputs, outputs=panel, **private)
    tab.new_files.click(fix(NEW_FILE), inputs=inputs, outputs=panel, **private)
    tab.undo.click(undo_fix, inputs=inputs, outputs=panel, **private)
    dataset_gallery_panel.wire(tab.gallery, form)
