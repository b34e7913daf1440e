"""Reads a run folder back: events.jsonl from a byte offset on, folded into one `Run` per run.
A folder trained again (or resumed) holds several runs one after another, each starting with a
`status` event of phase "loading". No torch: the GUI reads run folders with this too.

A new event type needs one fold rule here: a field on Run, a function, and its line in FOLD.
Events of a type with no rule are kept, unfolded, in `Run.other`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ti_core.run_folder.names import (
    CHECKPOINT,
    DONE,
    ERROR,
    EVENTS_FILE,
    HINT,
    LOADING,
    SAMPLE,
    SCORE,
    STATUS,
    STEP,
    SUGGESTION,
    VALIDATION,
    VECTORS,
    WARNING,
)

__all__ = ["Run", "RunReader", "read_events", "read_new_events", "read_run_folder"]

Event = dict[str, Any]


class Sample(NamedTuple):
    path: str
    prompt: str
    step: int

    @property
    def prompt_index(self) -> int | None:
        """Its prompt's place in sample_prompts, from the file name (None: not our name)."""
        return _sample_name_part(self.path, 1)

    @property
    def seed(self) -> int | None:
        """The seed it was made with, from the file name (None: not our name)."""
        return _sample_name_part(self.path, 2)


def _sample_name_part(path: str, part: int) -> int | None:
    # samples/<step>-<prompt index>-<seed>.png (names.SAMPLES_DIR); the event holds the path only
    pieces = Path(path).stem.split("-")
    if len(pieces) != 3 or not all(piece.isdigit() for piece in pieces):
        return None
    return int(pieces[part])


class Saved(NamedTuple):
    """A checkpoint event: an embedding file written (later pruning may have deleted it)."""

    step: int | None
    path: str
    format: str


@dataclass
class Run:
    """What one run's events say so far."""

    events: int = 0  # how many events of this run were read, of every type
    phase: str = ""
    last_step: Event = field(default_factory=dict)
    losses: list[tuple[int, float]] = field(default_factory=list)  # step, loss
    samples: list[Sample] = field(default_factory=list)
    checkpoints: list[Saved] = field(default_factory=list)  # in the order saved
    warnings: list[str] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # message, hint
    done: Event | None = None
    validation: list[tuple[int, float]] = field(default_factory=list)  # step, validation loss
    vectors: list[Event] = field(default_factory=list)  # vector health, oldest first
    hints: list[Event] = field(default_factory=list)  # {step, kind, message}
    suggestion: Event | None = None  # the latest {step, path, why}
    scores: list[Event] = field(default_factory=list)  # {step, clip_i, clip_t, images}
    other: list[Event] = field(default_factory=list)  # events of types with no fold rule

    def apply(self, event: Event) -> None:
        self.events += 1
        fold = FOLD.get(str(event.get("type", "")))
        if fold is None:
            self.other.append(event)
        else:
            fold(self, event)


# ---- fold rules: one per event type -----------------------------------------------------------


def _step_of(event: Event) -> int | None:
    step = event.get("step")
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def _fold_status(run: Run, event: Event) -> None:
    run.phase = str(event.get("phase", ""))


def _fold_step(run: Run, event: Event) -> None:
    run.last_step = event
    loss = event.get("loss")  # null when the loss was not finite
    if isinstance(loss, (int, float)):
        run.losses.append((_step_of(event) or 0, float(loss)))


def _fold_sample(run: Run, event: Event) -> None:
    if isinstance(event.get("path"), str):
        run.samples.append(
            Sample(event["path"], str(event.get("prompt", "")), _step_of(event) or 0)
        )


def _fold_checkpoint(run: Run, event: Event) -> None:
    if isinstance(event.get("path"), str):
        run.checkpoints.append(Saved(_step_of(event), event["path"], str(event.get("format", ""))))


def _fold_warning(run: Run, event: Event) -> None:
    run.warnings.append(str(event.get("message", "")))


def _fold_error(run: Run, event: Event) -> None:
    run.errors.append((str(event.get("message", "")), str(event.get("hint", ""))))


def _fold_done(run: Run, event: Event) -> None:
    run.done = event


def _fold_validation(run: Run, event: Event) -> None:
    if isinstance(event.get("loss"), (int, float)):
        run.validation.append((_step_of(event) or 0, float(event["loss"])))


def _fold_vectors(run: Run, event: Event) -> None:
    if isinstance(event.get("encoders"), dict):
        run.vectors.append(event)


def _fold_hint(run: Run, event: Event) -> None:
    run.hints.append(event)


def _fold_suggestion(run: Run, event: Event) -> None:
    if isinstance(event.get("path"), str):
        run.suggestion = event


def _fold_score(run: Run, event: Event) -> None:
    if _step_of(event) is not None:
        run.scores.append(event)


FOLD: dict[str, Callable[[Run, Event], None]] = {
    STATUS: _fold_status,
    STEP: _fold_step,
    SAMPLE: _fold_sample,
    CHECKPOINT: _fold_checkpoint,
    WARNING: _fold_warning,
    ERROR: _fold_error,
    DONE: _fold_done,
    VALIDATION: _fold_validation,
    VECTORS: _fold_vectors,
    HINT: _fold_hint,
    SUGGESTION: _fold_suggestion,
    SCORE: _fold_score,
}


# ---- a run folder -----------------------------------------------------------------------------


class RunReader:
    """One run folder's events, read incrementally: each `refresh` folds the whole lines
    written since the last one. `runs` holds the folder's runs in order; `latest` is the last
    (an empty Run before the first event). Start at `offset` to leave earlier runs unread."""

    def __init__(self, folder: str | Path, offset: int = 0) -> None:
        self.folder = Path(folder)
        self.offset = offset
        self.runs: list[Run] = [Run()]

    @property
    def latest(self) -> Run:
        return self.runs[-1]

    def refresh(self) -> bool:
        """Read the events written since the last call; True when there were any."""
        new, self.offset = read_new_events(self.folder / EVENTS_FILE, self.offset)
        for event in new:
            self.apply(event)
        return bool(new)

    def apply(self, event: Event) -> None:
        if event.get("type") == STATUS and event.get("phase") == LOADING and self.latest.events:
            self.runs.append(Run())  # the folder's next run begins
        self.latest.apply(event)

    # Files, over every run of the folder: a resumed run's earlier checkpoints are still its own.

    def checkpoint_files(self) -> dict[Path, int | None]:
        """The files of checkpoint events that still exist (pruning deletes old ones), each with
        its step (None when the event had none), in the order last saved."""
        files: dict[Path, int | None] = {}
        for run in self.runs:
            for saved in run.checkpoints:
                path = self.find(saved.path)
                if path is not None:
                    files.pop(path, None)
                    files[path] = saved.step
        return files

    def final_file(self) -> Path | None:
        """The final embedding the last `done` event with a path named, if it still exists."""
        for run in reversed(self.runs):
            if run.done and isinstance(run.done.get("path"), str):
                return self.find(run.done["path"])
        return None

    def find(self, path: str) -> Path | None:
        """An event's file, looked for in the run folder first (the folder may have been moved
        since), then where the event says; None when it is in neither."""
        for candidate in (self.folder / Path(path).name, Path(path)):
            if candidate.is_file():
                return candidate.resolve()
        return None


def read_run_folder(folder: str | Path) -> RunReader:
    """A run folder's events as they are now, every run of it."""
    reader = RunReader(folder)
    reader.refresh()
    return reader


# ---- lines ------------------------------------------------------------------------------------


def read_new_events(path: str | Path, offset: int = 0) -> tuple[list[Event], int]:
    """Events from byte `offset` on, and the offset after the last whole line: a GUI polls
    with the returned offset. A last line still being written is left for the next call;
    a line that is not a JSON object is skipped."""
    try:
        with open(path, "rb") as source:
            source.seek(offset)
            data = source.read()
    except FileNotFoundError:
        return [], offset
    whole = data[: data.rfind(b"\n") + 1]
    events = []
    for line in whole.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events, offset + len(whole)


def read_events(path: str | Path) -> list[Event]:
    """All whole events in an events.jsonl (none if it does not exist yet)."""
    return read_new_events(path)[0]
