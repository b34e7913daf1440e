"""The GUI's side of the generation worker (`python -m ti_core serve`, ARCHITECTURE.md contract 5).

The worker is started on the first request and keeps the model loaded between clicks; this
process stays torch-free. Replies are read on a thread, so a hung worker times out instead of
hanging the page. A worker that died is started again on the next request, with the model and
embeddings it had, and the reply says so. Every failure comes back as {"ok": False, "error",
"hint"}, the worker's own and the transport's alike.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ti_gui.supervisor import tail

PROJECT_ROOT = Path(__file__).resolve().parents[1]
STARTUP_S = 180.0  # added to the first request's timeout: importing torch and friends
QUIT_WAIT_S = 5.0
# How long one request may take before the worker counts as hung; loading a real SDXL model
# or a big batch on a CPU takes minutes.
TIMEOUTS_S = {"ping": 30.0, "remove_embedding": 60.0, "list_checkpoints": 60.0}
DEFAULT_TIMEOUT_S = 600.0
LONG_TIMEOUT_S = 3600.0  # generate, compare_grid
LONG_OPS = ("generate", "compare_grid")


def default_log_path() -> Path:
    """One log per GUI process, so two GUIs never write into each other's."""
    return Path(tempfile.gettempdir()) / f"ti-generation-worker-{os.getpid()}.log"


def failure(error: str, hint: str = "") -> dict[str, Any]:
    return {"ok": False, "error": error, "hint": hint}


class GenerationClient:
    """One worker process, one request at a time."""

    def __init__(
        self,
        command: list[str] | None = None,
        log_path: str | Path | None = None,
        cwd: str | Path = PROJECT_ROOT,
        startup_s: float = STARTUP_S,
    ) -> None:
        self.command = command or [sys.executable, "-m", "ti_core", "serve"]
        self.log_path = Path(log_path) if log_path else default_log_path()
        self.cwd = Path(cwd)
        self.startup_s = startup_s
        self.process: subprocess.Popen | None = None
        self.starts = 0
        self._replies: queue.Queue = queue.Queue()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        # What the worker holds, so a restarted one can be given the same again.
        self.model_request: dict[str, Any] | None = None
        self.state: dict[str, Any] = {}  # the last {"model", "family", "embeddings"} it sent

    # ---- the one public call --------------------------------------------------------------

    def request(self, op: str, timeout: float | None = None, **fields: Any) -> dict[str, Any]:
        """Send {"op": op, **fields}; the worker's reply, or a failure reply when the worker
        cannot answer (did not start, died, hung past `timeout` seconds)."""
        timeout = timeout if timeout is not None else timeout_for(op)
        if not self._lock.acquire(timeout=timeout):
            return failure(
                "the generation worker is busy with another request.",
                "wait for it to finish (the page shows its progress) and try again.",
            )
        try:
            notices: list[str] = []
            if not self.is_alive():
                try:
                    notices = self._start()
                except OSError as error:
                    self.process = None
                    return failure(
                        f"cannot start the generation worker ({' '.join(self.command)}): {error}",
                        "check that the project's Python environment is complete (launch.sh).",
                    )
                timeout += self.startup_s
            reply = self._exchange({"op": op, **fields}, timeout)
            self._remember(op, fields, reply)
            if notices:
                reply["notices"] = notices + list(reply.get("notices", []))
            return reply
        finally:
            self._lock.release()

    def is_alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def shutdown(self) -> None:
        """Ask the worker to quit; end it if it does not (atexit)."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                process.stdin.write('{"op": "quit"}\n')
                process.stdin.flush()
            _end(process)
        with contextlib.suppress(OSError, ValueError):
            process.stdin.close()
        self.process = None

    def log_tail(self, lines: int = 15) -> str:
        return tail(self.log_path, lines)

    # ---- the process ----------------------------------------------------------------------

    def _start(self) -> list[str]:
        """Start a worker; after a death, give it the model and embeddings the old one had."""
        died = self.process is not None
        code = self.process.poll() if self.process is not None else None
        if self.process is not None:
            self.shutdown()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p
        )
        with open(self.log_path, "ab") as log:
            log.write(f"\n--- worker start {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                encoding="utf-8",
                bufsize=1,
                env=env,
                start_new_session=True,  # Ctrl+C in the GUI's terminal is the GUI's to handle
            )
        self.starts += 1
        self._replies = queue.Queue()  # replies of the old process must not be taken as new
        threading.Thread(
            target=_read_replies, args=(self.process.stdout, self._replies), daemon=True
        ).start()
        if not died:
            return []
        return [self._restore(code)]

    def _restore(self, code: int | None) -> str:
        said = f"The generation worker had stopped (exit code {code}) and was started again"
        if self.model_request is None:
            return said + "."
        model = self.model_request.get("model")
        reply = self._exchange(
            {"op": "load_model", **self.model_request}, timeout_for("load_model") + self.startup_s
        )
        if not reply.get("ok"):
            self.model_request, self.state = None, {}
            return f"{said}, but reloading {model} failed: {reply.get('error')}"
        paths = [e["path"] for e in self.embeddings if e.get("path")]
        if not paths:
            return f"{said}; {model} is loaded again."
        triggers = [e.get("trigger") for e in self.embeddings if e.get("path")]
        reply = self._exchange(
            {"op": "load_embeddings", "paths": paths, "triggers": triggers},
            timeout_for("load_embeddings"),
        )
        self._remember("load_embeddings", {}, reply)
        if not reply.get("ok"):
            return f"{said}; {model} is loaded again, the embeddings not: {reply.get('error')}"
        return f"{said}; {model} and {len(paths)} embedding(s) are loaded again."

    def _exchange(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Write one request, wait for the reply with its id."""
        process = self.process
        assert process is not None
        request_id = next(self._ids)
        try:
            process.stdin.write(json.dumps({"id": request_id, **message}) + "\n")
            process.stdin.flush()
        except (OSError, ValueError):
            return self._died(message["op"])
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return self._hung(message["op"], timeout)
            try:
                reply = self._replies.get(timeout=left)
            except queue.Empty:
                continue
            if reply is None:  # end of the worker's output: it died
                return self._died(message["op"])
            if reply.get("id") == request_id:
                return reply
            # A reply to an earlier request that timed out: not this one's.

    def _died(self, op: str) -> dict[str, Any]:
        process = self.process
        code = None
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = process.wait(timeout=QUIT_WAIT_S)
        log = self.log_tail()
        return failure(
            f"the generation worker stopped while answering {op!r} (exit code {code}).",
            "it is started again with the next request. Last lines of its log "
            f"({self.log_path}):\n{log}",
        )

    def _hung(self, op: str, timeout: float) -> dict[str, Any]:
        if self.process is not None:
            _end(self.process, polite=False)
        return failure(
            f"the generation worker did not answer {op!r} within {timeout:.0f} s; it was ended.",
            "it is started again (with the model and embeddings) with the next request. "
            f"Its log: {self.log_path}",
        )

    def _remember(self, op: str, fields: dict[str, Any], reply: dict[str, Any]) -> None:
        if not reply.get("ok"):
            return
        if op == "load_model":
            self.model_request = dict(fields)
        if "embeddings" in reply and reply.get("model") is not None:
            self.state = {key: reply.get(key) for key in ("model", "family", "embeddings")}

    @property
    def embeddings(self) -> list[dict[str, Any]]:
        return list(self.state.get("embeddings") or [])


def timeout_for(op: str) -> float:
    if op in LONG_OPS:
        return LONG_TIMEOUT_S
    return TIMEOUTS_S.get(op, DEFAULT_TIMEOUT_S)


def _read_replies(stdout: Any, replies: queue.Queue) -> None:
    """Each JSON line of the worker's stdout into `replies`; None at the end."""
    try:
        for line in stdout:
            line = line.strip()
            if not line:
                continue
            try:
                reply = json.loads(line)
            except ValueError:
                continue  # not a reply; the worker sends everything else to its log
            if isinstance(reply, dict):
                replies.put(reply)
    except (OSError, ValueError):
        pass
    replies.put(None)


def _end(process: subprocess.Popen, polite: bool = True) -> None:
    """Wait for a quitting process; terminate, then kill, one that does not end."""
    if polite:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=QUIT_WAIT_S)
            return
    for stop in (process.terminate, process.kill):
        with contextlib.suppress(OSError):
            stop()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=QUIT_WAIT_S)
            return


CLIENT = GenerationClient()
