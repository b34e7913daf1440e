"""Dataset tab: where the images are and how they are read; "Check dataset" runs the engine's
dataset doctor in a child process (it opens every image) and shows its report."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from ti_core.config import Config
from ti_core.config_io import config_to_toml
from ti_gui.fields import Form

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CHECK_TIMEOUT_S = 300
MAX_PROBLEMS_SHOWN = 30


@dataclass
class DatasetTab:
    check: gr.Button
    report: gr.Markdown


def run_doctor(config: Config) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `python -m ti_core check-dataset --json` on `config`."""
    with tempfile.TemporaryDirectory(prefix="ti-check-") as folder:
        path = Path(folder) / "config.toml"
        path.write_text(config_to_toml(config), encoding="utf-8")
        try:
            done = subprocess.run(
                [sys.executable, "-m", "ti_core", "check-dataset", "--config", str(path), "--json"],
                cwd=PROJECT_ROOT,
                capture_output=True,
                text=True,
                timeout=CHECK_TIMEOUT_S,
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
        form.add("train_data_dir")
        form.add("dataset_config")
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
        form.add_rest("dataset")
    check = gr.Button("Check dataset")
    report = gr.Markdown(elem_id="dataset-report")
    return DatasetTab(check, report)


def wire(tab: DatasetTab, form: Form) -> None:
    def check_dataset(data: dict) -> str:
        result = form.collect(data)
        if result.config is None:
            return "Fix the config first.\n\n" + result.message()
        return report_markdown(*run_doctor(result.config))

    tab.check.click(
        check_dataset, inputs=form.inputs(), outputs=tab.report, api_name="check_dataset"
    )
