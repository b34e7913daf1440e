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

from ti_core.atomic import atomic_path
from ti_core.run_folder.reader import FOLD, Run, RunReader, read_run_folder
from ti_core.run_folder.writer import (
    SAMPLE_NOW,
    SAVE_NOW,
    STOP,
    RunFolder,
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
from ti_core.run_folder.writer import STOP, RunFolder

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


# ---- the reader: events.jsonl folded into runs ------------------------------------------------


def _train(run: RunFolder, steps: list[int], final: str | None, saved: list[str]) -> None:
    """One run as the loop writes it: loading, steps, a checkpoint per file in `saved`, done."""
    run.status("loading")
    run.status("training")
    for step in steps:
        run.step(step=step, epoch=1, loss=1 / step, lr=1e-3, it_s=1.0, eta_s=0.0, total_steps=9)
    for step, name in zip(steps, saved, strict=False):
        (run.path / name).write_bytes(b"vectors")
        run.checkpoint(step, name, "safetensors")
    run.done("stopped" if final is None else "finished", final)


def test_a_folder_trained_twice_shows_only_its_second_run(tmp_path):
    with RunFolder(tmp_path) as run:
        _train(run, [1, 2], "toy.safetensors", ["toy-step1.safetensors", "toy.safetensors"])
        run.warning("first run's warning")
    with RunFolder(tmp_path) as run:
        _train(run, [3], None, ["toy-step3.safetensors"])
    history = read_run_folder(tmp_path)
    assert len(history.runs) == 2
    latest = history.latest
    assert latest.losses == [(3, 1 / 3)] and latest.last_step["step"] == 3
    assert latest.warnings == [] and latest.done["reason"] == "stopped"
    assert [saved.step for saved in latest.checkpoints] == [3]
    assert history.runs[0].done["reason"] == "finished"
    # Files are the folder's, over both runs: a resumed run keeps its earlier checkpoints.
    assert list(history.checkpoint_files().values()) == [1, 2, 3]
    assert history.final_file() == (tmp_path / "toy.safetensors").resolve()  # the last named
    started_after = RunReader(tmp_path, offset=(tmp_path / "events.jsonl").stat().st_size)
    assert not started_after.refresh() and started_after.latest.events == 0


def test_the_reader_follows_a_run_and_keeps_a_half_written_line_for_later(tmp_path):
    run = RunFolder(tmp_path)
    reader = RunReader(tmp_path)
    assert not reader.refresh() and reader.latest.phase == ""  # no events.jsonl yet
    run.status("loading")
    run.step(step=1, epoch=1, loss=0.5, lr=1e-3, it_s=1.0, eta_s=9.0, total_steps=10)
    with open(run.events_path, "a") as out:
        out.write('{"type": "step", "time": 1.0, "step": 2, "lo')
    assert reader.refresh() and reader.latest.losses == [(1, 0.5)]
    assert not reader.refresh()
    with open(run.events_path, "a") as out:
        out.write('ss": 0.25}\n')
    assert reader.refresh()
    assert reader.latest.losses == [(1, 0.5), (2, 0.25)] and reader.latest.events == 3
    assert len(reader.runs) == 1


def test_pruned_checkpoints_are_absent_and_a_moved_folder_still_finds_its_files(tmp_path):
    with RunFolder(tmp_path / "run") as run:
        names = ["toy-step1.safetensors", "toy-step2.safetensors", "toy.safetensors"]
        _train(run, [1, 2, 2], "toy.safetensors", names)
    (tmp_path / "run" / "toy-step1.safetensors").unlink()  # pruned by save_last_n_steps
    history = read_run_folder(tmp_path / "run")
    assert [saved.step for saved in history.latest.checkpoints] == [1, 2, 2]  # what was saved
    files = history.checkpoint_files()
    assert [path.name for path in files] == ["toy-step2.safetensors", "toy.safetensors"]
    assert history.final_file() == (tmp_path / "run" / "toy.safetensors").resolve()

    (tmp_path / "run").rename(tmp_path / "moved")  # the events still name the old place
    moved = read_run_folder(tmp_path / "moved")
    assert [p.parent for p in moved.checkpoint_files()] == [(tmp_path / "moved").resolve()] * 2
    assert moved.final_file() == (tmp_path / "moved" / "toy.safetensors").resolve()
    (tmp_path / "moved" / "toy.safetensors").unlink()
    assert read_run_folder(tmp_path / "moved").final_file() is None


def test_unknown_event_types_and_odd_fields_do_not_stop_the_reader(tmp_path):
    lines = [
        {"type": "status", "phase": "training"},
        {"type": "future_type", "step": 1, "clip_i": [0.4]},  # a type with no rule (yet)
        {"type": "vectors", "step": 1, "norm": [0.4]},  # no encoders: nothing to draw
        {"type": "sample", "step": 1},  # no path: nothing to show
        {"type": "step", "step": "two", "loss": None},
        {"no type": True},
        {"type": "checkpoint", "step": 2.5, "path": str(tmp_path / "x.safetensors")},
    ]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    run = read_run_folder(tmp_path).latest
    assert run.events == 7 and run.phase == "training"
    assert [event.get("type") for event in run.other] == ["future_type", None]
    assert run.vectors == []
    assert run.samples == [] and run.losses == [] and run.last_step["step"] == "two"
    assert run.checkpoints[0].step is None  # not a whole number


def test_a_new_event_type_needs_only_a_fold_rule(tmp_path, monkeypatch):
    def fold_future(run: Run, event: dict) -> None:
        run.warnings.append(f"future_type {event['clip_i']} at step {event['step']}")

    monkeypatch.setitem(FOLD, "future_type", fold_future)
    with RunFolder(tmp_path) as run:
        run.event("future_type", step=5, clip_i=0.125)
    assert read_run_folder(tmp_path).latest.warnings == ["future_type 0.125 at step 5"]
