"""The run bar above the tabs, on every tab: Train and Stop, the run's step, speed, ETA and
phase, what keeps Train off, and the run's progress in the browser tab's title."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ti_core.errors import TiError
from ti_gui.fields import VALID_MESSAGE, Form
from ti_gui.run_view import clock, headline, run_choices
from ti_gui.supervisor import SUPERVISOR, RunState

POLL_S = 1.0
# gradio has no title output: a hidden HTML block carries the title and sets it in the page.
SET_TITLE_JS = (
    "const set = () => { if (props.value) { document.title = props.value; } };"
    " set(); watch('value', set);"
)


@dataclass
class RunBar:
    train: gr.Button
    stop: gr.Button
    status: gr.Markdown  # step x / y, it/s, ETA, phase of the run this GUI trains
    form_status: gr.Markdown  # "Valid." or what keeps Train off
    message: gr.Markdown  # what the last button press did
    title: gr.HTML  # the browser tab's title, e.g. "[42%] Textual Inversion trainer"
    timer: gr.Timer
    seen: gr.State  # per page: what the bar drew last, so an unchanged run sends nothing


@dataclass
class TrainStart:
    """Train's handler with its inputs and outputs, so another button (the Start tab's demo)
    starts a run exactly as Train does."""

    fn: Callable[[dict[Any, Any]], dict[Any, Any]]
    inputs: set[Any]
    outputs: list[Any]


def build(title: str) -> RunBar:
    with gr.Group(elem_id="run-bar"):
        with gr.Row(equal_height=True):
            train = gr.Button(
                "Train", variant="primary", elem_id="train-button", scale=0, min_width=110
            )
            stop = gr.Button("Stop", variant="stop", elem_id="stop-button", scale=0, min_width=110)
            with gr.Column(scale=3, min_width=320):
                status = gr.Markdown("No run yet", elem_id="run-bar-status")
            with gr.Column(scale=2, min_width=240):
                form_status = gr.Markdown(VALID_MESSAGE, elem_id="form-status")
        message = gr.Markdown(elem_id="run-message")
    title_box = gr.HTML(
        title, html_template="<span hidden>${value}</span>", js_on_load=SET_TITLE_JS,
        elem_id="run-title", padding=False,
    )  # fmt: skip
    return RunBar(
        train, stop, status, form_status, message, title_box, gr.Timer(POLL_S), gr.State({})
    )


def bar_markdown(state: RunState | None, live: bool, exit_code: int | None) -> str:
    """One line: the run's headline (its phase), step x / y (%), it/s, ETA; a progress bar."""
    if state is None:
        return "No run yet"
    parts = [f"**{headline(state, live, exit_code)}**"]
    step = state.last_step
    done, total = int(step.get("step", 0) or 0), int(step.get("total_steps", 0) or 0)
    if step:
        parts.append(f"step {done} / {total}" + (f" ({percent(done, total)}%)" if total else ""))
        if live:
            parts += [f"{step.get('it_s', 0) or 0:.2f} it/s", f"ETA {clock(step.get('eta_s'))}"]
    parts.append(f"`{state.folder.name}`")
    bar = f'<progress value="{done}" max="{max(total, 1)}"></progress>' if total else ""
    return " · ".join(parts) + (f"\n\n{bar}" if bar else "")


def percent(done: int, total: int) -> int:
    return int(100 * done / total) if total else 0


def page_title(state: RunState | None, live: bool, exit_code: int | None, title: str) -> str:
    """ "[42%] title" while training, "[starting] title" before the first step, "[Finished]
    title" (Stopped, Failed, ...) after: seen from another browser tab."""
    if state is None or not (live or state.events):
        return title
    total = int(state.last_step.get("total_steps", 0) or 0)
    if live and total:
        return f"[{percent(int(state.last_step.get('step', 0) or 0), total)}%] {title}"
    if live:
        return f"[starting] {title}"
    return f"[{headline(state, live, exit_code).split(' (')[0]}] {title}"


def wire(
    bar: RunBar,
    form: Form,
    sample_prompts: gr.Textbox,
    runs_root: gr.Textbox,
    shown: gr.Dropdown,
    title: str,
) -> TrainStart:
    """Train writes the form's config and starts the run; Stop asks it to stop; a timer draws
    the run this GUI trains (or trained last, or adopted after a restart)."""

    def draw_bar(seen: dict) -> dict[Any, Any]:
        folder = SUPERVISOR.folder
        state = SUPERVISOR.state(folder) if folder else None
        live = bool(folder) and SUPERVISOR.is_live(folder)
        code = SUPERVISOR.exit_code(folder) if folder else None
        key = [str(folder), state.events if state else 0, state.offset if state else 0, live, code]
        if seen.get("key") == key:
            return {bar.seen: seen}
        return {
            bar.seen: {"key": key},
            bar.status: bar_markdown(state, live, code),
            bar.title: page_title(state, live, code, title),
        }

    def start(data: dict[Any, Any]) -> dict[Any, Any]:
        result = form.collect(data)
        if not result.ready:  # nothing is written: no run folder for a form that cannot train
            return {bar.message: "**Cannot train:** fix the config first.\n\n" + result.message()}
        try:
            folder = SUPERVISOR.start(result.config, data[sample_prompts] or "")
        except TiError as error:
            return {bar.message: f"**Cannot train:** {error}"}
        choices = run_choices(data[runs_root], folder)
        return {
            bar.message: f"Started a run in `{folder}`.",
            shown: gr.update(choices=choices, value=str(folder)),
            bar.form_status: VALID_MESSAGE,
        }

    def train_enabled(status: str) -> dict[str, Any]:
        """Train is offered only while the form can train (the bar's form status says so)."""
        return gr.update(interactive=(status or "").startswith(VALID_MESSAGE))

    def stop() -> str:
        try:
            return SUPERVISOR.stop()
        except TiError as error:
            return f"**{error}**"

    private = {"api_visibility": "private"}
    train = TrainStart(
        start, form.inputs() | {sample_prompts, runs_root}, [bar.message, shown, bar.form_status]
    )
    bar.train.click(train.fn, inputs=train.inputs, outputs=train.outputs, **private)
    bar.form_status.change(
        train_enabled, inputs=bar.form_status, outputs=bar.train, show_progress="hidden", **private
    )
    bar.stop.click(stop, outputs=bar.message, **private)
    bar.timer.tick(
        draw_bar, inputs=bar.seen, outputs=[bar.status, bar.title, bar.seen],
        show_progress="hidden", **private,
    )  # fmt: skip
    return train
