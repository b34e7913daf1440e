"""Run tab: Train starts the run (tabs -> one config -> ti_gui.supervisor), a timer draws its
run folder; Stop / Save now / Sample now ask the run through flag files; past runs reopen."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from ti_core.config.toml_io import config_from_toml
from ti_core.errors import TiError
from ti_core.run_folder.names import LOG_FILE, SAMPLE_NOW, SAVE_NOW
from ti_gui import run_view
from ti_gui.fields import VALID_MESSAGE, Form
from ti_gui.supervisor import SUPERVISOR, list_runs, saved_state

POLL_S = 1.0
MAX_TOASTS = 3


@dataclass
class RunTab:
    train: gr.Button
    stop: gr.Button
    save_now: gr.Button
    sample_now: gr.Button
    resume: gr.Button
    resume_note: gr.Markdown
    message: gr.Markdown
    progress: gr.Markdown
    loss: gr.LinePlot
    gallery: gr.Gallery
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
        train = gr.Button("Train", variant="primary", elem_id="train-button")
        stop = gr.Button("Stop", variant="stop", elem_id="stop-button")
        save_now = gr.Button("Save now")
        sample_now = gr.Button("Sample now")
        resume = gr.Button("Resume", interactive=False, elem_id="resume-button")
    resume_note = gr.Markdown(elem_id="resume-note")
    message = gr.Markdown(elem_id="run-message")
    progress = gr.Markdown("### No run yet", elem_id="run-progress")
    with gr.Row():
        loss = gr.LinePlot(
            x="step", y="loss", color="curve", title="Loss", height=280, elem_id="loss-chart"
        )
        gallery = gr.Gallery(
            label="Samples", columns=4, height=280, interactive=False, elem_id="samples-gallery"
        )
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
        train, stop, save_now, sample_now, resume, resume_note, message, progress, loss, gallery,
        checkpoints, messages, log, runs_root, shown, refresh, gr.Timer(POLL_S), gr.State({}),
    )  # fmt: skip


def run_choices(root: str, *extra: Path | None) -> list[str]:
    folders = [str(path) for path in list_runs(root)]
    for path in extra:
        if path is not None and str(path) not in folders:
            folders.insert(0, str(path))
    return folders


def wire(
    tab: RunTab, form: Form, sample_prompts: gr.Textbox, form_status: gr.Markdown, app: gr.Blocks
) -> None:
    views = [tab.progress, tab.loss, tab.gallery, tab.checkpoints, tab.messages, tab.log,
             tab.resume, tab.resume_note]  # fmt: skip

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
                       "samples": len(state.samples), "losses": len(state.losses)},
            tab.progress: run_view.progress_markdown(state, live, code),
            tab.checkpoints: run_view.checkpoints_markdown(state),
            tab.messages: run_view.messages_markdown(state, code),
            tab.log: run_view.log_text(Path(folder)),
        }  # fmt: skip
        can_resume, why = run_view.resume_status(state, live, running)
        out[tab.resume] = gr.update(interactive=can_resume)
        out[tab.resume_note] = why
        if not (same_folder and seen.get("losses") == len(state.losses)):
            out[tab.loss] = run_view.loss_frame(state)
        if not (same_folder and seen.get("samples") == len(state.samples)):
            out[tab.gallery] = run_view.gallery_items(state)
        return out

    def start(data: dict[Any, Any]) -> dict[Any, Any]:
        result = form.collect(data)
        if not result.ready:  # nothing is written: no run folder for a form that cannot train
            return {tab.message: "**Cannot train:** fix the config first.\n\n" + result.message()}
        try:
            folder = SUPERVISOR.start(result.config, data[sample_prompts] or "")
        except TiError as error:
            return {tab.message: f"**Cannot train:** {error}"}
        choices = run_choices(data[tab.runs_root], folder)
        return {
            tab.message: f"Started a run in `{folder}`.",
            tab.shown: gr.update(choices=choices, value=str(folder)),
            form_status: VALID_MESSAGE,
        }

    def resume(folder: str, root: str) -> dict[Any, Any]:
        """Start the shown run again from its saved state (its own config.toml; the form is
        left as it is, so a later Train does not resume by surprise)."""
        try:
            started = SUPERVISOR.resume(folder)
        except TiError as error:
            return {tab.message: f"**Cannot resume:** {error}"}
        return {
            tab.message: f"Resumed the run in `{started}` from its saved state.",
            tab.shown: gr.update(choices=run_choices(root, started), value=str(started)),
            tab.seen: {},
        }

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
    tab.train.click(
        start, inputs=form.inputs() | {sample_prompts, tab.runs_root},
        outputs=[tab.message, tab.shown, form_status], **private,
    )  # fmt: skip

    def train_enabled(status: str) -> dict[str, Any]:
        """Train is offered only while the form can train (the status above the tabs says so)."""
        return gr.update(interactive=(status or "").startswith(VALID_MESSAGE))

    form_status.change(
        train_enabled, inputs=form_status, outputs=tab.train, show_progress="hidden", **private
    )
    tab.stop.click(lambda: act(SUPERVISOR.stop), outputs=tab.message, **private)
    tab.resume.click(
        resume, inputs=[tab.shown, tab.runs_root], outputs=[tab.message, tab.shown, tab.seen],
        **private,
    )  # fmt: skip
    tab.save_now.click(
        lambda: act(lambda: SUPERVISOR.request(SAVE_NOW)), outputs=tab.message, **private
    )
    tab.sample_now.click(
        lambda: act(lambda: SUPERVISOR.request(SAMPLE_NOW)), outputs=tab.message, **private
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
