"""The GUI starts as a user starts it, serves a page, and checks configs like the engine."""

from __future__ import annotations

import urllib.request

from gradio_client import Client


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
