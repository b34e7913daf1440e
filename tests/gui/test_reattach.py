"""A GUI that crashed leaves its training run going; the next GUI finds the run, shows it live
and stops it: through the STOP flag, or with a second Stop by ending its process group."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import start_gui, stop_gui
from gradio_client import Client
from test_run import demo_config, wait_for

from ti_gui.supervisor import PID_FILE, STOP_GRACE_S, AdoptedProcess, Supervisor


def test_a_run_outlives_a_crashed_gui_and_the_next_gui_stops_it(tmp_path):
    first, url = start_gui(7980)
    try:
        client = Client(url, verbose=False)
        config = demo_config(
            client,
            tmp_path / "run",
            training={"max_train_steps": 5000},
            sampling={"sample_every_n_steps": 0},
        )
        folder = client.predict(config, "", api_name="/start_run")
        wait_for(client, folder, lambda s: s["step"] >= 3)
        record = json.loads((Path(folder) / PID_FILE).read_text())
    finally:
        first.kill()  # a hard crash: no atexit, no clean-up
        first.wait(timeout=20)
    time.sleep(1.0)
    pid = record["pid"]
    assert AdoptedProcess(pid, record["config"]).poll() is None  # still training

    second, url = start_gui(7985)
    try:
        client = Client(url, verbose=False)
        before = wait_for(client, folder, lambda s: s["live"])
        assert before["headline"].startswith("Running")
        later = wait_for(client, folder, lambda s: s["step"] > before["step"])
        assert later["live"] and later["total_steps"] == 5000
        assert "Stopping" in client.predict(api_name="/stop_run")
        ended = wait_for(client, folder, lambda s: s["done_reason"] and not s["live"], timeout=60)
        assert ended["done_reason"] == "stopped" and ended["headline"] == "Stopped"
        assert Path(ended["final_embedding"]).is_file()
    finally:
        stop_gui(second)
    assert AdoptedProcess(pid, record["config"]).poll() is not None


def test_a_second_stop_ends_an_adopted_run_by_its_process_group(tmp_path):
    """A run that does not answer STOP (here a stand-in that only sleeps, with the command line
    of a training run) is ended by pid once the grace time has passed."""
    folder = tmp_path / "run"
    folder.mkdir()
    config_path = str(folder / "config.toml")
    stand_in = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", "-m", "ti_core", "train",
         "--config", config_path],
        start_new_session=True,
    )  # fmt: skip
    try:
        (folder / PID_FILE).write_text(json.dumps({"pid": stand_in.pid, "config": config_path}))
        (folder / "events.jsonl").write_text('{"type": "status", "time": 1, "phase": "loading"}\n')
        supervisor = Supervisor()
        assert supervisor.reattach(tmp_path) == folder.resolve()
        assert supervisor.is_live(folder) and supervisor.exit_code(folder) is None

        assert "Stopping" in supervisor.stop()
        assert (folder / "STOP").exists()
        supervisor.stop_pressed_at -= STOP_GRACE_S + 1
        assert "Ending the training process now" in supervisor.stop()
        assert stand_in.wait(timeout=10) != 0  # ended by a signal
        deadline = time.monotonic() + 10
        while supervisor.is_running() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not supervisor.is_running()
    finally:
        stand_in.kill()
        stand_in.wait()


def test_a_stale_pid_file_is_not_adopted(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "events.jsonl").write_text("")
    # this test process is alive, but it is not a training run of that config
    (folder / PID_FILE).write_text(json.dumps({"pid": os.getpid(), "config": "x/config.toml"}))
    assert Supervisor().reattach(tmp_path) is None
