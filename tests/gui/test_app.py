"""The GUI starts as a user starts it, serves a page, and checks configs like the engine."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import ROOT
from gradio_client import Client


@pytest.fixture(scope="module")
def gui_url():
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    process = subprocess.Popen(
        [sys.executable, "gui.py", "--no-browser", "--port", "7960"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        url = None
        while url is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line and process.poll() is not None:
                pytest.fail(f"gui.py exited with {process.returncode}")
            if "http://127.0.0.1:" in line:
                url = line.split()[-1]
        assert url, "gui.py printed no URL within 60 s"
        for _ in range(100):  # the URL is printed just before the server accepts connections
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_page_is_served_on_localhost(gui_url):
    assert gui_url.startswith("http://127.0.0.1:79")
    html = urllib.request.urlopen(gui_url, timeout=10).read().decode()
    assert "Textual Inversion trainer" in html


def test_second_gui_takes_the_next_free_port(gui_url):
    from gui import find_free_port

    taken = int(gui_url.rstrip("/").rsplit(":", 1)[1])
    assert find_free_port("127.0.0.1", taken) > taken


def test_check_config_reports_a_typo_with_the_fix(gui_url):
    client = Client(gui_url, verbose=False)
    status, command = client.predict(
        '[model]\npretrained_model_name_or_pth = "demo:sd1"\n', api_name="/check_config"
    )
    assert "Not valid" in status and "Did you mean 'pretrained_model_name_or_path'" in status
    assert command == ""


def test_demo_preset_is_valid_and_gives_its_command_line(gui_url):
    client = Client(gui_url, verbose=False)
    preset = client.predict("demo", api_name="/read_preset")
    status, command = client.predict(preset, api_name="/check_config")
    assert status.startswith("**Valid.**") and "demo model" in status
    assert command.startswith("python -m ti_core train --pretrained_model_name_or_path demo:sd1")
