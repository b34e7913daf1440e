"""Starts one training run as a child process and follows its run folder.

State lives here, in the GUI process, not in a browser session: a reloaded page reattaches to
the running run. The child's pid is written into its run folder (train.pid), so a GUI started
again after a crash finds a run that still trains and adopts it (`reattach`). The run is only
ever asked to act through the run folder's flag files (ARCHITECTURE.md, "Control flags"); a
second Stop after STOP_GRACE_S ends its process group.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ti_core.atomic import write_text_atomic
from ti_core.config.run_config import SECRET_OPTIONS, Config
from ti_core.config.toml_io import config_to_toml, load_config
from ti_core.errors import TiError
from ti_core.run_folder.names import (
    CONFIG_FILE,
    CONSOLE_LOG,
    EVENTS_FILE,
    FLAGS,
    PID_FILE,
    PROMPTS_FILE,
    STATE_DIR,
    STATE_FILE,
    STOP,
)
from ti_core.run_folder.reader import RunReader, Sample, Saved

PROJECT_ROOT = Path(__file__).resolve().parents[1]
REATTACH_RUNS = 10  # newest run folders looked at for a run that outlived its GUI
STOP_GRACE_S = 10.0
KILL_AFTER_S = 5.0


class RunError(TiError):
    """A run cannot be started or asked to act (one is running already, no run, ...)."""


class RunState(RunReader):
    """What the Run view draws for one run folder: its latest run, as the engine's reader folds
    events.jsonl (a folder trained again holds several runs one after another)."""

    @property
    def events(self) -> int:
        return self.latest.events

    @property
    def phase(self) -> str:
        return self.latest.phase

    @property
    def last_step(self) -> dict[str, Any]:
        return self.latest.last_step

    @property
    def losses(self) -> list[tuple[int, float]]:
        return self.latest.losses

    @property
    def samples(self) -> list[Sample]:
        return self.latest.samples

    @property
    def checkpoints(self) -> list[Saved]:
        return self.latest.checkpoints

    @property
    def warnings(self) -> list[str]:
        return self.latest.warnings

    @property
    def errors(self) -> list[tuple[str, str]]:
        return self.latest.errors

    @property
    def done(self) -> dict[str, Any] | None:
        return self.latest.done


class Supervisor:
    """At most one training child at a time; any number of run folders to look at."""

    def __init__(self, python: str = sys.executable) -> None:
        self.python = python
        self.process: subprocess.Popen | AdoptedProcess | None = None
        self.folder: Path | None = None  # the folder of the last run started here
        self.stop_pressed_at: float | None = None
        self.stop_pending = False  # Stop before the run's first event: flag it once it starts
        self.signalled = False
        self._states: dict[Path, RunState] = {}
        self._lock = threading.RLock()

    # ---- starting -------------------------------------------------------------------------

    def is_running(self) -> bool:
        with self._lock:
            return self.process is not None and self.process.poll() is None

    def start(self, config: Config, sample_prompts: str = "") -> Path:
        """Write the config into its run folder and start `python -m ti_core train` on it."""
        with self._lock:
            if self.is_running():
                raise RunError(
                    f"a run is already training in {self.folder}; stop it before starting another."
                )
            config = copy.deepcopy(config)
            # A wandb key or Hub token typed in the form goes to the child's environment
            # (WANDB_API_KEY, HF_TOKEN: their libraries read them), never into config.toml.
            secrets = {variable: getattr(config.saving, name)
                       for name, variable in SECRET_OPTIONS.items()}  # fmt: skip
            for name in SECRET_OPTIONS:
                setattr(config.saving, name, "")
            folder = Path(config.saving.output_dir or "output").resolve()
            folder.mkdir(parents=True, exist_ok=True)
            config.saving.output_dir = str(folder)  # the saved config reproduces from anywhere
            if sample_prompts.strip():
                prompts = folder / PROMPTS_FILE
                write_text_atomic(prompts, sample_prompts.strip() + "\n")
                config.sampling.sample_prompts = str(prompts)
            config_path = folder / CONFIG_FILE
            write_text_atomic(config_path, config_to_toml(config))
            state = RunState(folder, offset=_size(folder / EVENTS_FILE))  # earlier runs unread
            self._states[folder] = state
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            env.update({variable: value for variable, value in secrets.items() if value})
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p
            )
            with open(folder / CONSOLE_LOG, "wb") as console:
                self.process = subprocess.Popen(
                    [self.python, "-m", "ti_core", "train", "--config", str(config_path)],
                    stdout=console,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,  # its own process group: Stop can end all of it
                )
            record = {"pid": self.process.pid, "config": str(config_path)}
            write_text_atomic(folder / PID_FILE, json.dumps(record) + "\n")
            self.folder, self.stop_pressed_at = folder, None
            self.stop_pending = self.signalled = False
            return folder

    def reattach(self, root: str | Path, *folders: str | Path) -> Path | None:
        """Adopt a run that a GUI before this one started and that still trains (that GUI
        crashed or was killed): `folders`, then the newest run folders in `root`. Returns its
        folder; None when there is none or this GUI runs one already."""
        with self._lock:
            if self.is_running():
                return None
            candidates = [Path(folder) for folder in folders] + list_runs(root)[:REATTACH_RUNS]
            for folder in candidates:
                process = AdoptedProcess.from_run_folder(folder)
                if process is not None:
                    folder = folder.resolve()
                    self.process, self.folder, self.stop_pressed_at = process, folder, None
                    self.stop_pending = self.signalled = False
                    return folder
            return None

    def resume(self, folder: str | Path) -> Path:
        """Start the run of `folder` again from its saved state, with the config it ran with
        (its config.toml) and `resume` pointed at its state/ folder."""
        folder = Path(folder).resolve()
        state = saved_state(folder)
        if state is None:
            raise RunError(
                f"{folder} has no saved state ({STATE_DIR}/{STATE_FILE}); a run saves one "
                "when save_state is on."
            )
        config = load_config(folder / CONFIG_FILE)
        config.saving.output_dir, config.saving.resume = str(folder), str(state)
        return self.start(config)

    # ---- looking --------------------------------------------------------------------------

    def state(self, folder: str | Path) -> RunState:
        """The folder's run, read up to its latest event."""
        folder = Path(folder).resolve()
        with self._lock:
            state = self._states.setdefault(folder, RunState(folder))
            state.refresh()
            if folder == self.folder and state.events and self.stop_pending:
                self.stop_pending = False
                (folder / STOP).touch()
            return state

    def exit_code(self, folder: str | Path) -> int | None:
        """The child's exit code when `folder` is the last run started here and it ended."""
        with self._lock:
            if self.process is None or Path(folder).resolve() != self.folder:
                return None
            if isinstance(self.process, AdoptedProcess):
                return None  # not our child: its exit code is its first GUI's to know
            return self.process.poll()

    def is_live(self, folder: str | Path) -> bool:
        return self.is_running() and Path(folder).resolve() == self.folder

    # ---- asking the run to act ------------------------------------------------------------

    def request(self, flag: str) -> str:
        """SAVE_NOW or SAMPLE_NOW: create the flag file the run takes at its next step."""
        if flag not in FLAGS:
            raise ValueError(flag)
        with self._lock:
            if not self.is_running() or self.folder is None:
                raise RunError("no run is training.")
            if not self.state(self.folder).events:
                raise RunError("the run is still starting; ask again once it trains.")
            (self.folder / flag).touch()
            return f"Asked the run to {flag.replace('_', ' ').lower()} at its next step."

    def stop(self) -> str:
        """First press: STOP (save and end at the next step). A press STOP_GRACE_S later,
        with the run still alive: end its process group (SIGTERM twice, SIGKILL if needed)."""
        with self._lock:
            if not self.is_running() or self.folder is None or self.process is None:
                raise RunError("no run is training.")
            now = time.monotonic()
            if self.stop_pressed_at is None:
                self.stop_pressed_at = now
                if self.state(self.folder).events:
                    (self.folder / STOP).touch()
                else:
                    self.stop_pending = True
                return "Stopping: the run saves its embedding and ends after the current step."
            waited = now - self.stop_pressed_at
            if waited < STOP_GRACE_S:
                return (
                    f"Already stopping ({waited:.0f} s ago). Press Stop again after "
                    f"{STOP_GRACE_S:.0f} s to end the process at once."
                )
            self._terminate(self.process)
            return "Ending the training process now (steps since the last save are lost)."

    def _terminate(self, process: subprocess.Popen | AdoptedProcess) -> None:
        self.signalled = True
        group = process.pid  # start_new_session: the group id is the child's pid
        for _ in range(2):  # the run takes the first SIGTERM as STOP, the second ends it
            _signal_group(group, signal.SIGTERM)
            time.sleep(0.2)

        def kill_if_alive() -> None:
            try:
                process.wait(timeout=KILL_AFTER_S)
            except subprocess.TimeoutExpired:
                _signal_group(group, signal.SIGKILL)
                process.wait()

        threading.Thread(target=kill_if_alive, daemon=True).start()

    def shutdown(self) -> None:
        """Leave no training child behind when the GUI ends (atexit)."""
        with self._lock:
            if self.is_running() and self.process is not None:
                self._terminate(self.process)


class AdoptedProcess:
    """A training child started by an earlier GUI, known by its pid: what Supervisor uses of
    a Popen (pid, poll, wait). Alive while the pid runs `ti_core train` on the run's config."""

    def __init__(self, pid: int, config_path: str) -> None:
        self.pid, self.config_path = pid, config_path
        self.returncode: int | None = None

    @classmethod
    def from_run_folder(cls, folder: str | Path) -> AdoptedProcess | None:
        """The run folder's training child, when it still trains; else None."""
        try:
            record = json.loads((Path(folder) / PID_FILE).read_text(encoding="utf-8"))
            process = cls(int(record["pid"]), str(record["config"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return process if process.poll() is None else None

    def poll(self) -> int | None:
        if self.returncode is None and not is_training_process(self.pid, self.config_path):
            self.returncode = -1  # ended; how is not known here
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0)
            time.sleep(0.1)
        return self.returncode  # type: ignore[return-value]


def is_training_process(pid: int, config_path: str) -> bool:
    """Whether `pid` is alive and is `python -m ti_core train --config <config_path>` (a pid
    the system gave to another program since is not)."""
    words = command_line(pid)
    return bool(words) and "ti_core" in words and "train" in words and config_path in words


def command_line(pid: int) -> list[str]:
    """The program and arguments of a running process ([] when it is gone or a zombie)."""
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():  # Linux
        try:
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return []
            return [
                w for w in (proc / "cmdline").read_bytes().decode(errors="replace").split("\0") if w
            ]
        except (OSError, IndexError):
            return []
    try:  # macOS and other Unix: ps (a path with spaces splits, so compare the whole line too)
        done = subprocess.run(
            ["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    line = done.stdout.strip()
    return [*line.split(), line] if line and "<defunct>" not in line else []


def saved_state(folder: str | Path) -> Path | None:
    """The run folder's resumable state folder, when the run saved one."""
    state = Path(folder) / STATE_DIR
    return state if (state / STATE_FILE).is_file() else None


def _signal_group(group: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signum)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a text file ("" when it does not exist)."""
    try:
        with open(path, "rb") as source:
            source.seek(max(0, source.seek(0, os.SEEK_END) - 64_000))
            text = source.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def list_runs(root: str | Path) -> list[Path]:
    """Run folders (holding events.jsonl) in `root` and one level below it, newest first."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return []
    found = {p.parent.resolve() for p in root.glob(EVENTS_FILE)}
    found |= {p.parent.resolve() for p in root.glob(f"*/{EVENTS_FILE}")}
    return sorted(found, key=lambda p: _mtime(p / EVENTS_FILE), reverse=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


SUPERVISOR = Supervisor()
