"""What the Run tab shows for a run folder, drawn from its RunState: progress, samples,
checkpoints, messages, and why a run that died ended (the loss chart: charts.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from ti_core.run_folder.names import CONSOLE_LOG, LOG_FILE
from ti_gui.supervisor import RunState, list_runs, saved_state, tail

MAX_SAMPLES_SHOWN = 24


def clock(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def progress_markdown(state: RunState, live: bool, exit_code: int | None) -> str:
    step = state.last_step
    lines = [f"Run folder: `{state.folder}`"]
    if step:
        done, total = int(step.get("step", 0)), int(step.get("total_steps", 0) or 0)
        percent = f" ({100 * done / total:.0f}%)" if total else ""
        lines.insert(
            0,
            f"**step {done} / {total}**{percent} · {step.get('it_s', 0):.2f} it/s · "
            f"ETA {clock(step.get('eta_s')) if live else '-'} · "
            f"loss {_loss_text(step.get('loss'))} · "
            f"lr {step.get('lr', 0):.3g} · epoch {step.get('epoch', '?')}",
        )
        lines.insert(1, f'<progress value="{done}" max="{max(total, 1)}"></progress>')
    lines.insert(0, f"### {headline(state, live, exit_code)}")
    if state.done and state.done.get("path"):
        lines.append(f"Final embedding: `{state.done['path']}`")
    return "\n\n".join(lines)


def _loss_text(loss: float | None) -> str:
    return "nan" if loss is None else f"{loss:.4f}"


def headline(state: RunState, live: bool, exit_code: int | None) -> str:
    if state.done:
        reason = state.done.get("reason", "")
        return {"finished": "Finished", "stopped": "Stopped", "failed": "Failed"}.get(
            reason, str(reason)
        )
    if live:
        phase = state.phase or "starting (loading the engine)"
        return f"Running: {phase}"
    if exit_code is not None:
        return f"The training process ended (exit code {exit_code}) without finishing"
    if state.events:
        return "Not running (the run ended without a done event, or another GUI runs it)"
    return "No run yet"


def why_it_died(state: RunState, exit_code: int | None) -> str:
    """The last error event, else the end of the child's console output."""
    if state.errors:
        message, hint = state.errors[-1]
        return f"**Error:** {message}" + (f"\n\n**What to do:** {hint}" if hint else "")
    console = tail(state.folder / CONSOLE_LOG, 12)
    errors = [line for line in console.splitlines() if line.startswith("error: ")]
    if errors:
        return f"**Error:** {errors[-1].removeprefix('error: ')}"
    if exit_code:
        output = f"\n```\n{console}\n```" if console else ""
        return f"**The process ended with exit code {exit_code}.** Its last output:{output}"
    return ""


def messages_markdown(state: RunState, exit_code: int | None) -> str:
    lines = []
    if (state.done and state.done.get("reason") == "failed") or (
        exit_code not in (None, 0) and not state.done
    ):
        lines.append(why_it_died(state, exit_code))
    elif state.errors:
        lines += [f"**Error:** {message}" for message, _ in state.errors[-3:]]
    lines += [f"- warning: {message}" for message in state.warnings[-10:]]
    return "\n\n".join(line for line in lines if line)


def gallery_items(state: RunState) -> list[tuple[Image.Image, str]]:
    """The latest samples, newest first. Opened here rather than passed as paths: a run folder
    may lie outside the folders Gradio serves files from."""
    items = []
    for path, prompt, step in reversed(state.samples[-MAX_SAMPLES_SHOWN:]):
        try:
            with Image.open(path) as image:
                items.append((image.copy(), f"step {step}: {prompt}"))
        except OSError:
            continue
    return items


def resume_status(state: RunState, live: bool, another_running: bool) -> tuple[bool, str]:
    """(Resume can be pressed, why or why not) for the run shown."""
    if live:
        return False, ""
    if saved_state(state.folder) is None:
        return False, (
            "*Resume:* this run saved no resumable state. Turn on save_state (Sampling & saving "
            "→ More saving options) to make runs resumable."
        )
    if another_running:
        return False, "*Resume:* another run is training; stop it first."
    if state.done and state.done.get("reason") == "finished":
        return True, (
            "*Resume* continues from its saved state; this run finished all its steps, so it "
            "ends at once unless you raise max_train_steps in its config.toml."
        )
    return True, "*Resume* continues this run from its saved state, with its own config.toml."


def checkpoints_markdown(state: RunState) -> str:
    """The embeddings of the run that are still on disk (save_last_n_* prunes old copies)."""
    kept = [saved for saved in state.checkpoints if Path(saved.path).is_file()]
    if not kept:
        return "No embedding saved yet."
    lines = [f"- step {saved.step}: `{saved.path}`" for saved in kept[-20:]]
    return "**Saved embeddings**\n\n" + "\n".join(lines)


def run_choices(root: str, *extra: Path | None) -> list[str]:
    """The run folders in `root`, newest first, with `extra` folders (a run just started)."""
    folders = [str(path) for path in list_runs(root)]
    for path in extra:
        if path is not None and str(path) not in folders:
            folders.insert(0, str(path))
    return folders


def log_text(folder: Path, lines: int = 40) -> str:
    return tail(folder / LOG_FILE, lines) or tail(folder / CONSOLE_LOG, lines)


def snapshot(state: RunState, live: bool, exit_code: int | None) -> dict[str, Any]:
    """The run as plain data (the run_snapshot API, used by tests and scripts)."""
    return {
        "folder": str(state.folder),
        "live": live,
        "exit_code": exit_code,
        "phase": state.phase,
        "events": state.events,
        "step": state.last_step.get("step", 0),
        "total_steps": state.last_step.get("total_steps", 0),
        "losses": len(state.losses),
        "checkpoints": [saved.path for saved in state.checkpoints],
        "samples": [sample.path for sample in state.samples],
        "warnings": state.warnings,
        "errors": [message for message, _ in state.errors],
        # Not the done event itself: gradio_client would take a dict with "path" for a file.
        "done_reason": (state.done or {}).get("reason"),
        "final_embedding": (state.done or {}).get("path"),
        "headline": headline(state, live, exit_code),
        "messages": messages_markdown(state, exit_code),
    }


HINT_TITLES = {
    "not_moving": "Not moving",
    "norm_runaway": "Norm running away",
    "overfitting": "Overfitting",
    "encoder_idle": "One encoder idle",
}


def insight_markdown(state: RunState) -> str:
    """The run's hints and its suggested step, in plain words, above the charts."""
    run = state.latest
    lines = [
        f"**Hint: {HINT_TITLES.get(str(h.get('kind')), h.get('kind'))}** (step {h.get('step')}): "
        f"{h.get('message', '')}"
        for h in run.hints
    ]
    if run.suggestion:
        name = Path(str(run.suggestion.get("path", ""))).name
        lines.append(
            f"**Suggested step to keep: {run.suggestion.get('step')}** (`{name}`): "
            f"{run.suggestion.get('why', '')}"
        )
    if run.validation:
        step, loss = run.validation[-1]
        lines.append(f"Validation loss at step {step}: {loss:.5f}")
    return "\n\n".join(lines)
