"""The run folder as the GUI sees it: event lines, the human log, control flags, signals."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import ROOT

from ti_core.run_folder import (
    SAMPLE_NOW,
    SAVE_NOW,
    STOP,
    RunFolder,
    atomic_path,
    read_events,
    read_new_events,
)


def _lines(run: RunFolder) -> list[dict]:
    return [json.loads(line) for line in run.events_path.read_text().splitlines()]


def test_every_event_is_one_json_line_with_type_and_time(tmp_path):
    run = RunFolder(tmp_path / "run")
    before = time.time()
    run.status("loading")
    run.step(step=3, epoch=1, loss=0.25, lr=5e-3, it_s=2.0, eta_s=98.5, total_steps=200)
    run.sample(3, "samples/000003-00-42.png", "a photo of mychar4")
    run.checkpoint(3, tmp_path / "run" / "out.safetensors", "safetensors")
    run.warning("low disk")
    run.error("out of memory", hint="lower the batch size")
    run.done("finished", "out.safetensors")
    events = _lines(run)
    assert [e["type"] for e in events] == [
        "status",
        "step",
        "sample",
        "checkpoint",
        "warning",
        "error",
        "done",
    ]
    assert all(before - 1 <= e["time"] <= time.time() + 1 for e in events)
    step = events[1]
    assert (step["step"], step["total_steps"], step["loss"], step["eta_s"]) == (3, 200, 0.25, 98.5)
    assert events[2]["path"] == str(tmp_path / "run" / "samples" / "000003-00-42.png")
    assert events[6] | {"time": 0} == {
        "type": "done",
        "time": 0,
        "reason": "finished",
        "path": str(tmp_path / "run" / "out.safetensors"),
    }
    assert (tmp_path / "run" / "samples").is_dir()


def test_values_become_plain_json(tmp_path):
    run = RunFolder(tmp_path)
    run.step(step=1, epoch=0, loss=float("nan"), lr=1e-3, it_s=float("inf"), eta_s=0, total_steps=1)
    line = run.events_path.read_text()
    assert "NaN" not in line and "Infinity" not in line
    assert json.loads(line)["loss"] is None
    with pytest.raises(ValueError, match="finished"):
        run.done("crashed")


def test_a_half_written_last_line_is_left_for_the_next_read(tmp_path):
    run = RunFolder(tmp_path)
    run.status("training")
    run.step(step=1, epoch=0, loss=0.5, lr=1e-3, it_s=1.0, eta_s=9.0, total_steps=10)
    with open(run.events_path, "a") as out:
        out.write('{"type": "step", "time": 1.0, "st')
    assert [e["type"] for e in read_events(run.events_path)] == ["status", "step"]
    events, offset = read_new_events(run.events_path)
    assert len(events) == 2
    with open(run.events_path, "a") as out:
        out.write('ep": 2}\n')
    more, _ = read_new_events(run.events_path, offset)
    assert more == [{"type": "step", "time": 1.0, "step": 2}]
    assert read_events(tmp_path / "missing.jsonl") == []


def test_a_flag_is_taken_once_and_deleted(tmp_path):
    run = RunFolder(tmp_path)
    for name in (STOP, SAVE_NOW, SAMPLE_NOW):
        assert not run.take_flag(name)
        (tmp_path / name).touch()
        assert run.take_flag(name)
        assert not (tmp_path / name).exists()
        assert not run.take_flag(name)
    assert run.stop_requested
    with pytest.raises(ValueError, match="STOP"):
        run.take_flag("PAUSE")


def test_flags_left_by_an_earlier_run_are_cleared_at_start(tmp_path):
    (tmp_path / STOP).touch()
    (tmp_path / SAMPLE_NOW).touch()
    run = RunFolder(tmp_path)
    assert not (tmp_path / STOP).exists() and not (tmp_path / SAMPLE_NOW).exists()
    assert not run.take_flag(STOP) and not run.stop_requested


def test_logged_warnings_become_events_and_all_lines_reach_train_log(tmp_path):
    run = RunFolder(tmp_path)
    run.attach_logging()
    logger = logging.getLogger("ti_core.some_module")
    logger.info("caching latents for %d images", 12)
    logger.warning("%s: no caption file; using the folder's class tokens", "img1.png")
    run.close()
    logger.warning("after close: not this run's business")
    warnings = [e for e in read_events(run.events_path) if e["type"] == "warning"]
    assert [w["message"] for w in warnings] == [
        "img1.png: no caption file; using the folder's class tokens"
    ]
    log_text = run.log_path.read_text()
    assert "caching latents for 12 images" in log_text
    assert "WARNING" in log_text and "img1.png: no caption file" in log_text
    assert "after close" not in log_text


def test_atomic_path_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "embedding.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    with atomic_path(target) as temporary:
        temporary.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["embedding.safetensors"]


SIGNAL_SCRIPT = """
import os, signal, sys, time
sys.path.insert(0, {root!r})
from ti_core.run_folder import STOP, RunFolder

run = RunFolder(sys.argv[1])
assert run.install_stop_signals()
print("before:", run.take_flag(STOP), flush=True)
os.kill(os.getpid(), signal.{name})
time.sleep(0.2)
print("first:", run.take_flag(STOP), run.stop_requested, flush=True)
print("again:", run.take_flag(STOP), run.stop_requested, flush=True)
os.kill(os.getpid(), signal.{name})
time.sleep(0.2)
print("still running", flush=True)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_first_signal_requests_a_stop_and_a_second_ends_at_once(tmp_path, name):
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(SIGNAL_SCRIPT.format(root=str(ROOT), name=name)))
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.splitlines() == ["before: False", "first: True True", "again: False True"]
    assert "Stop requested" in result.stderr
    assert "KeyboardInterrupt" in result.stderr
    # An uncaught KeyboardInterrupt makes Python end itself by SIGINT.
    assert result.returncode == -signal.SIGINT


def test_install_outside_the_main_thread_is_refused_quietly(tmp_path):
    import threading

    run = RunFolder(tmp_path)
    answers = []
    thread = threading.Thread(target=lambda: answers.append(run.install_stop_signals()))
    thread.start()
    thread.join()
    assert answers == [False]
