"""Run tab: the detail of a run (Train and Stop are in the run bar above the tabs): a timer
draws the run folder shown; Save now / Sample now ask the run through flag files; past runs
reopen and Resume continues one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from ti_core.config.toml_io import config_from_toml
from ti_core.errors import TiError
from ti_core.run_folder.keep import REPLACED, keep_step
from ti_core.run_folder.names import LOG_FILE, SAMPLE_NOW, SAVE_NOW
from ti_gui import charts, run_view, sample_grid, sample_grid_html
from ti_gui.fields import Form
from ti_gui.run_bar import RunBar
from ti_gui.run_view import run_choices
from ti_gui.supervisor import SUPERVISOR, saved_state

POLL_S = 1.0
MAX_TOASTS = 3


@dataclass
class RunTab:
    save_now: gr.Button
    sample_now: gr.Button
    resume: gr.Button
    resume_note: gr.Markdown
    progress: gr.Markdown
    insight: gr.Markdown  # hints and the suggested step
    keep: gr.Button  # Keep this step: the suggested checkpoint becomes the final file
    loss: gr.LinePlot
    norm: gr.LinePlot
    drift: gr.LinePlot
    gallery: gr.Gallery
    grid: gr.HTML  # saved steps x sample prompts (sample_grid.py); a click opens Generate
    checkpoints: gr.Markdown
    messages: gr.Markdown
    log: gr.Textbox
    runs_root: gr.Textbox
    shown: gr.Dropdown
    refresh: gr.Button
    timer: gr.Timer
    seen: gr.State  # per page: what was drawn last, so an unchanged run sends nothing


def default_runs_root(form: Form) -> str:
    return str(Path(form.initial.saving.output_dir or "output").resolve().parent)


def build(form: Form) -> RunTab:
    with gr.Row():
        save_now = gr.Button("Save now")
        sample_now = gr.Button("Sample now")
        resume = gr.Button("Resume", interactive=False, elem_id="resume-button")
    resume_note = gr.Markdown(elem_id="resume-note")
    progress = gr.Markdown("### No run yet", elem_id="run-progress")
    with gr.Row():
        insight = gr.Markdown(elem_id="run-insight")
        keep = gr.Button("Keep this step", visible=False, scale=0, elem_id="keep-step")
    with gr.Row():
        loss = charts.loss_plot()
        gallery = gr.Gallery(
            label="Samples", columns=4, height=280, interactive=False, elem_id="samples-gallery"
        )
    with gr.Row():
        norm = charts.lines_plot("Vector norm", "norm", "norm-chart")
        drift = charts.lines_plot("Drift from the start (1 - cosine)", "drift", "drift-chart")
    with gr.Accordion("Samples by step", open=True):
        grid = sample_grid_html.grid_widget()
    with gr.Row():
        checkpoints = gr.Markdown("No embedding saved yet.")
        messages = gr.Markdown(elem_id="run-messages")
    log = gr.Textbox(label="Log (train.log, last lines)", lines=10, max_lines=10, interactive=False)
    with gr.Accordion("Past runs", open=False), gr.Row():
        runs_root = gr.Textbox(
            default_runs_root(form),
            label="Runs folder",
            info="Run folders (with events.jsonl) in this folder are listed below.",
        )
        shown = gr.Dropdown([], label="Run shown", allow_custom_value=True, elem_id="run-shown")
        refresh = gr.Button("Refresh list")
    return RunTab(
        save_now, sample_now, resume, resume_note, progress, insight, keep, loss, norm, drift,
        gallery, grid,
        checkpoints, messages, log, runs_root, shown, refresh, gr.Timer(POLL_S), gr.State({}),
    )  # fmt: skip


def wire(tab: RunTab, bar: RunBar, app: gr.Blocks) -> None:
    """The Run tab's own buttons answer in the run bar's message line (seen from any tab)."""
    views = [tab.progress, tab.insight, tab.keep, tab.loss, tab.norm, tab.drift, tab.gallery,
             tab.grid, tab.checkpoints, tab.messages, tab.log, tab.resume,
             tab.resume_note]  # fmt: skip

    def draw(folder: str, seen: dict) -> dict[Any, Any]:
        if not folder:
            return {tab.seen: seen}  # an empty dict would count as one output value
        state = SUPERVISOR.state(folder)
        live, code = SUPERVISOR.is_live(folder), SUPERVISOR.exit_code(folder)
        log_path = Path(folder) / LOG_FILE
        log_size = log_path.stat().st_size if log_path.exists() else 0
        running = SUPERVISOR.is_running()
        has_state = saved_state(folder) is not None
        key = [folder, state.events, state.offset, log_size, live, code, running, has_state]
        if seen.get("key") == key:
            return {tab.seen: seen}
        same_folder = seen.get("folder") == folder
        for warning in state.warnings[seen.get("warnings", 0) if same_folder else 0 :][
            -MAX_TOASTS:
        ]:
            gr.Warning(warning)
        out: dict[Any, Any] = {
            tab.seen: {"key": key, "folder": folder, "warnings": len(state.warnings),
                       "samples": len(state.samples), "losses": len(state.losses),
                       "validation": len(state.latest.validation),
                       "vectors": len(state.latest.vectors),
                       "chart": seen.get("chart") if same_folder else None,
                       "health": seen.get("health") if same_folder else None},
            tab.progress: run_view.progress_markdown(state, live, code),
            tab.checkpoints: run_view.checkpoints_markdown(state),
            tab.messages: run_view.messages_markdown(state, code),
            tab.log: run_view.log_text(Path(folder)),
        }  # fmt: skip
        can_resume, why = run_view.resume_status(state, live, running)
        out[tab.resume] = gr.update(interactive=can_resume)
        out[tab.resume_note] = why
        drawn = out[tab.seen]["chart"]
        total = int(state.last_step.get("total_steps", 0) or 0)
        validation = state.latest.validation
        counted = seen.get("losses") == len(state.losses)
        if not (
            drawn and drawn[0] == total and counted and seen.get("validation") == len(validation)
        ):
            out[tab.loss], out[tab.seen]["chart"] = charts.loss_update(
                state.losses, total, {"validation": validation}, drawn
            )
        health = out[tab.seen]["health"] or [None, None]
        if not (health[0] and seen.get("vectors") == len(state.latest.vectors)):
            norms, drifts = charts.health_lines(state.latest.vectors)
            out[tab.norm], health[0] = charts.lines_update(norms, total, health[0])
            out[tab.drift], health[1] = charts.lines_update(drifts, total, health[1])
            out[tab.seen]["health"] = health
        out[tab.insight] = run_view.insight_markdown(state)
        out[tab.keep] = gr.update(visible=bool(state.latest.suggestion) and not live)
        if not (same_folder and seen.get("samples") == len(state.samples)):
            out[tab.gallery] = run_view.gallery_items(state)
        grid = sample_grid.build_grid(state)
        out[tab.seen]["grid"] = grid.key()
        if not (same_folder and seen.get("grid") == out[tab.seen]["grid"]):
            out[tab.grid] = sample_grid_html.render(grid)
        return out

    def resume(folder: str, root: str) -> dict[Any, Any]:
        """Start the shown run again from its saved state (its own config.toml; the form is
        left as it is, so a later Train does not resume by surprise)."""
        try:
            started = SUPERVISOR.resume(folder)
        except TiError as error:
            return {bar.message: f"**Cannot resume:** {error}"}
        return {
            bar.message: f"Resumed the run in `{started}` from its saved state.",
            tab.shown: gr.update(choices=run_choices(root, started), value=str(started)),
            tab.seen: {},
        }

    def keep(folder: str) -> str:
        """The suggested step's file becomes the run's final file (the old one is kept)."""
        suggestion = SUPERVISOR.state(folder).latest.suggestion if folder else None
        if not suggestion:
            return "**No suggested step to keep** for this run."
        try:
            final = keep_step(folder, suggestion["path"])
        except TiError as error:
            return f"**Cannot keep that step:** {error}"
        return (
            f"Kept step {suggestion.get('step')}: `{final.name}` now holds it (the file it "
            f"replaced is `{final.stem}{REPLACED}{final.suffix}`)."
        )

    def act(action) -> str:
        try:
            return action()
        except TiError as error:
            return f"**{error}**"

    def attach(root: str) -> dict[Any, Any]:
        """On page load: show the run this GUI runs (a reload reattaches; a run an earlier GUI
        started and that still trains is adopted), else the latest."""
        SUPERVISOR.reattach(root)
        choices = run_choices(root, SUPERVISOR.folder)
        value = str(SUPERVISOR.folder) if SUPERVISOR.folder else (choices[0] if choices else None)
        return {tab.shown: gr.update(choices=choices, value=value), tab.seen: {}}

    private = {"api_visibility": "private"}
    tab.resume.click(
        resume, inputs=[tab.shown, tab.runs_root], outputs=[bar.message, tab.shown, tab.seen],
        **private,
    )  # fmt: skip
    tab.keep.click(keep, inputs=tab.shown, outputs=bar.message, **private)
    tab.save_now.click(
        lambda: act(lambda: SUPERVISOR.request(SAVE_NOW)), outputs=bar.message, **private
    )
    tab.sample_now.click(
        lambda: act(lambda: SUPERVISOR.request(SAMPLE_NOW)), outputs=bar.message, **private
    )
    tab.timer.tick(
        draw, inputs=[tab.shown, tab.seen], outputs=[*views, tab.seen],
        show_progress="hidden", **private,
    )  # fmt: skip
    tab.shown.change(
        lambda folder: draw(folder, {}), inputs=tab.shown, outputs=[*views, tab.seen], **private
    )
    tab.refresh.click(attach, inputs=tab.runs_root, outputs=[tab.shown, tab.seen], **private)
    gr.on(
        [tab.runs_root.submit],
        attach,
        inputs=tab.runs_root,
        outputs=[tab.shown, tab.seen],
        **private,
    )
    app.load(attach, inputs=tab.runs_root, outputs=[tab.shown, tab.seen], **private)
    add_api()


def add_api() -> None:
    """Endpoints for scripts and tests (gradio_client): the same actions by TOML text."""

    def start_run(config_toml: str, sample_prompts: str = "") -> str:
        """Start training the config; returns the run folder."""
        try:
            config = config_from_toml(config_toml, source="the config")
            return str(SUPERVISOR.start(config, sample_prompts))
        except TiError as error:
            raise gr.Error(str(error)) from None

    def run_snapshot(folder: str) -> dict:
        """The run in `folder` as data: step, total_steps, checkpoints, done, messages, ..."""
        SUPERVISOR.reattach(Path(folder).parent, folder)  # a run an earlier GUI started
        state = SUPERVISOR.state(folder)
        return run_view.snapshot(state, SUPERVISOR.is_live(folder), SUPERVISOR.exit_code(folder))

    def stop_run() -> str:
        """Press Stop."""
        try:
            return SUPERVISOR.stop()
        except TiError as error:
            raise gr.Error(str(error)) from None

    def resume_run(folder: str) -> str:
        """Press Resume on the run in `folder`; returns the run folder."""
        try:
            return str(SUPERVISOR.resume(folder))
        except TiError as error:
            raise gr.Error(str(error)) from None

    def request_run(flag: str) -> str:
        """SAVE_NOW or SAMPLE_NOW."""
        try:
            return SUPERVISOR.request(flag)
        except (TiError, ValueError) as error:
            raise gr.Error(str(error)) from None

    for function in (start_run, run_snapshot, stop_run, request_run, resume_run):
        gr.api(function, api_name=function.__name__)
