"""The run folder a training run writes into: events.jsonl, train.log, samples/, control flags.

The GUI never talks to a run; it reads what the run writes here (ARCHITECTURE.md, "The run
folder", "Events", "Control flags"). This module has no torch, so the GUI can import it too.

Event lines: {"type": ..., "time": <Unix epoch seconds, float, millisecond precision>, ...}.
Each event is one `write` of whole lines to a file opened in append mode, closed (so
flushed) right away; no fsync except for `done` and `error`, whose loss on a power cut
would hide how the run ended. Paths in events are absolute. With `step_events_every` set
(the training loop sets it), step events wait up to that many seconds and go out together
(the Run view redraws about once a second); any other event, and close(), writes them first.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from contextlib import suppress
from pathlib import Path
from types import FrameType
from typing import Any

from ti_core.run_folder import names
from ti_core.run_folder.names import (
    DONE_REASONS,
    EVENTS_FILE,
    FLAGS,
    LOG_FILE,
    PHASES,
    SAMPLE_NOW,
    SAMPLES_DIR,
    SAVE_NOW,
    STOP,
)
from ti_core.run_folder.reader import read_events, read_new_events

# The names and the readers are re-exported: the engine's code has long imported them here.
__all__ = [
    "EVENTS_FILE",
    "FLAGS",
    "LOG_FILE",
    "PHASES",
    "SAMPLES_DIR",
    "SAMPLE_NOW",
    "SAVE_NOW",
    "STOP",
    "RunFolder",
    "read_events",
    "read_new_events",
]

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"
STEP_EVENTS_EVERY_S = 1.0  # how often a training run's step events reach events.jsonl


class RunFolder:
    """One run's output folder. Creating it makes the folder and samples/, and clears control
    flags left by an earlier run in the same folder (the GUI creates flags only after the
    run's first event, so nothing meant for this run is lost)."""

    def __init__(self, output_dir: str | Path, writer: bool = True) -> None:
        # writer=False: a data-parallel helper process (see distributed.py). It knows the
        # paths but writes nothing and takes no flags; the first process does both.
        self.writer = writer
        self.path = Path(output_dir).resolve()
        self.samples_dir = self.path / SAMPLES_DIR
        if writer:
            self.samples_dir.mkdir(parents=True, exist_ok=True)
        self.events_path = self.path / EVENTS_FILE
        self.log_path = self.path / LOG_FILE
        self.stop_requested = False  # sticky: once a stop is seen, it stays seen
        self._signal_stop_pending = False
        self._signals_received = 0
        self._previous_signal_handlers: dict[int, Any] = {}
        self._handlers: list[tuple[logging.Logger, logging.Handler]] = []
        self._logger_levels: list[tuple[logging.Logger, int]] = []
        self._lock = threading.Lock()  # logging may call event() from other threads
        self.step_events_every = 0.0  # seconds step events may wait; 0: each written at once
        self._waiting: list[bytes] = []  # step event lines not yet written
        self._written_at = -math.inf  # time.monotonic() of the last write
        for name in self.clear_stale_flags():
            log.info("removed a %s flag left in %s by an earlier run", name, self.path)

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- events -------------------------------------------------------------------------

    def event(self, type: str, **fields: Any) -> dict[str, Any]:
        """Append one event line and return the event as written."""
        record = {"type": type, "time": round(time.time(), 3)}
        record.update({key: _plain(value) for key, value in fields.items()})
        if not self.writer:
            return record
        line = (json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n").encode()
        with self._lock:
            self._waiting.append(line)
            due = time.monotonic() - self._written_at >= self.step_events_every
            if type != names.STEP or due:
                self._write_waiting(fsync=type in (names.DONE, names.ERROR))
        return record

    def flush(self) -> None:
        """Write the step events still waiting (close() does it too)."""
        with self._lock:
            if self._waiting:
                self._write_waiting()

    def _write_waiting(self, fsync: bool = False) -> None:
        with open(self.events_path, "ab") as out:
            out.write(b"".join(self._waiting))
            out.flush()
            if fsync:
                os.fsync(out.fileno())
        self._waiting.clear()
        self._written_at = time.monotonic()

    def status(self, phase: str, message: str = "") -> dict[str, Any]:
        """A phase change; phase is one of PHASES (loading, caching, training, sampling, saving)."""
        return self.event(names.STATUS, phase=phase, message=message)

    def step(
        self,
        step: int,
        epoch: int,
        loss: float,
        lr: float,
        it_s: float,
        eta_s: float,
        total_steps: int,
    ) -> dict[str, Any]:
        """Progress after an optimizer step: it_s in steps per second, eta_s in seconds."""
        return self.event(
            names.STEP,
            step=step,
            total_steps=total_steps,
            epoch=epoch,
            loss=loss,
            lr=lr,
            it_s=it_s,
            eta_s=eta_s,
        )

    def sample(self, step: int, path: str | Path, prompt: str) -> dict[str, Any]:
        return self.event(names.SAMPLE, step=step, path=self._absolute(path), prompt=prompt)

    def checkpoint(self, step: int, path: str | Path, format: str) -> dict[str, Any]:
        """An embedding written; format names the file kind (e.g. safetensors, pt, diffusers)."""
        return self.event(names.CHECKPOINT, step=step, path=self._absolute(path), format=format)

    def validation(self, step: int, loss: float) -> dict[str, Any]:
        """The validation loss of the vectors at `step` (training/validation.py)."""
        return self.event(names.VALIDATION, step=step, loss=loss)

    def vectors(
        self, step: int, encoders: dict[str, list[dict]], vocab_median_norm: dict[str, float]
    ) -> dict[str, Any]:
        """Vector health per text encoder: each vector's norm, drift and nearest tokens."""
        return self.event(
            names.VECTORS, step=step, encoders=encoders, vocab_median_norm=vocab_median_norm
        )

    def hint(self, step: int, kind: str, message: str) -> dict[str, Any]:
        """A plain-words hint (not_moving, norm_runaway, overfitting, encoder_idle)."""
        return self.event(names.HINT, step=step, kind=kind, message=message)

    def suggestion(self, step: int, path: str | Path, why: str) -> dict[str, Any]:
        """The saved step to keep, and why."""
        return self.event(names.SUGGESTION, step=step, path=self._absolute(path), why=why)

    def score(self, step: int, clip_i: float, clip_t: float, images: int) -> dict[str, Any]:
        """The quality scores of a saved step (raw cosines in [-1, 1]) from `images` images."""
        return self.event(names.SCORE, step=step, clip_i=clip_i, clip_t=clip_t, images=images)

    def warning(self, message: str) -> dict[str, Any]:
        return self.event(names.WARNING, message=message)

    def error(self, message: str, hint: str = "") -> dict[str, Any]:
        return self.event(names.ERROR, message=message, hint=hint)

    def done(self, reason: str, path: str | Path | None = None) -> dict[str, Any]:
        """The last event of a run; path is the final embedding (None when none was saved)."""
        if reason not in DONE_REASONS:
            raise ValueError(f"done reason {reason!r}: expected one of {', '.join(DONE_REASONS)}")
        return self.event(names.DONE, reason=reason, path=self._absolute(path) if path else None)

    def _absolute(self, path: str | Path) -> str:
        return str((self.path / path).resolve())

    # ---- logging ------------------------------------------------------------------------

    def attach_logging(self, logger_name: str = "ti_core", level: int = logging.INFO) -> None:
        """Write `logger_name`'s records at `level` and above to train.log, and turn its
        WARNING records into `warning` events so the GUI shows them. Undone by close()."""
        if not self.writer:
            return
        logger = logging.getLogger(logger_name)
        file_handler = logging.FileHandler(self.log_path, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
        file_handler.setLevel(level)
        for handler in (file_handler, WarningEventHandler(self)):
            logger.addHandler(handler)
            self._handlers.append((logger, handler))
        if logger.level == logging.NOTSET or logger.level > level:
            self._logger_levels.append((logger, logger.level))
            logger.setLevel(level)

    def close(self) -> None:
        """Write waiting step events, detach the log handlers, give back the signal handlers."""
        if self.writer:
            self.flush()
        for logger, handler in self._handlers:
            logger.removeHandler(handler)
            handler.close()
        self._handlers.clear()
        for logger, old_level in self._logger_levels:
            logger.setLevel(old_level)
        self._logger_levels.clear()
        self.restore_signals()

    # ---- control flags ------------------------------------------------------------------

    def flag_path(self, name: str) -> Path:
        if name not in FLAGS:
            raise ValueError(f"unknown control flag {name!r}: expected one of {', '.join(FLAGS)}")
        return self.path / name

    def take_flag(self, name: str) -> bool:
        """True once per request: the flag file is deleted as it is taken. STOP is also true
        after a first SIGINT/SIGTERM, and then `stop_requested` stays true."""
        path = self.flag_path(name)
        taken = self.writer and path.exists()
        if taken:
            path.unlink(missing_ok=True)
        if name == STOP:
            taken = taken or self._signal_stop_pending
            self._signal_stop_pending = False
            self.stop_requested = self.stop_requested or taken
        return taken

    def clear_stale_flags(self) -> list[str]:
        if not self.writer:
            return []
        cleared = [name for name in FLAGS if (self.path / name).exists()]
        for name in cleared:
            (self.path / name).unlink(missing_ok=True)
        return cleared

    # ---- signals ------------------------------------------------------------------------

    def install_stop_signals(self) -> bool:
        """First SIGINT/SIGTERM: a stop request, seen by take_flag(STOP) at the next step (the
        run saves and ends cleanly). Second: KeyboardInterrupt at once; saves are atomic, so
        the files on disk stay whole. Only the main thread can install; returns whether it did."""
        if threading.current_thread() is not threading.main_thread():
            return False
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous_signal_handlers[signum] = signal.signal(signum, self._on_stop_signal)
        return True

    def restore_signals(self) -> None:
        for signum, handler in self._previous_signal_handlers.items():
            signal.signal(signum, handler)
        self._previous_signal_handlers.clear()

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        # Runs between bytecodes of the main thread: set flags only. Logging or writing an
        # event here could deadlock on a lock the interrupted code holds.
        self._signals_received += 1
        if self._signals_received > 1:
            raise KeyboardInterrupt
        self._signal_stop_pending = True
        with suppress(OSError):
            os.write(
                2,
                b"\nStop requested: the run saves and ends after this step. Press Ctrl+C "
                b"again to quit at once (steps since the last save are lost).\n",
            )


class WarningEventHandler(logging.Handler):
    """Turns WARNING log records into `warning` events (errors get their own `error` events)."""

    def __init__(self, run: RunFolder) -> None:
        super().__init__(level=logging.WARNING)
        self.run = run

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno != logging.WARNING:
            return
        try:
            self.run.warning(record.getMessage())
        except Exception:  # noqa: BLE001 - a log line must never end the run
            self.handleError(record)


def _plain(value: Any) -> Any:
    """A field value as plain JSON: paths as text, tensors/numpy scalars as numbers, and
    NaN/inf (e.g. a diverged loss) as null, which every JSON reader accepts."""
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
