"""The tabs edit one config, bound by option name: every option has its widget, values go in
and come back unchanged, refused values are reported by name; presets load; helpers of the
Token, Dataset and Run views show what a user needs."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import gradio as gr
import pytest

from ti_core.config.run_config import FIELDS
from ti_core.config.toml_io import config_to_dict, load_config
from ti_core.run_folder.writer import RunFolder
from ti_gui.fields import collect_values, option_value
from ti_gui.supervisor import RunState, list_runs

ROOT = Path(__file__).resolve().parents[2]
PRESETS = sorted((ROOT / "presets").glob("*.toml"))


@pytest.fixture(scope="module")
def form():
    from ti_gui.app import build_app

    return build_app().ti_form


def test_every_option_has_one_widget_of_its_kind(form):
    assert set(form.widgets) == set(FIELDS)
    for name, widget in form.widgets.items():
        info = FIELDS[name]
        assert widget.label == name and widget.info.startswith(info.help)
        if info.type is bool:
            assert isinstance(widget, gr.Checkbox)
        elif info.choices:
            assert isinstance(widget, gr.Dropdown)
        elif info.type in (int, float) and not info.text:
            assert isinstance(widget, gr.Number)
        else:
            assert isinstance(widget, gr.Textbox)


@pytest.mark.parametrize("preset", PRESETS, ids=lambda path: path.stem)
def test_a_preset_goes_through_the_form_unchanged(form, preset):
    config = load_config(preset)
    shown = {name: option_value(config, name) for name in form.widgets}
    result = collect_values(shown)
    assert result.errors == {}
    assert config_to_dict(result.config) == config_to_dict(config)


def test_presets_are_in_the_readme_table():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for preset in PRESETS:
        assert f"| `{preset.stem}` |" in readme, preset.stem


def test_refused_values_are_named_not_raised():
    values = {name: option_value(load_config(PRESETS[0]), name) for name in FIELDS}
    values.update(resolution="big", clip_skip=0, learning_rate="0.1:oops")
    result = collect_values(values)
    assert result.config is None
    assert set(result.errors) == {"resolution", "clip_skip", "learning_rate"}
    assert "[model] clip_skip = 0: expected at least 1" in result.errors["clip_skip"]
    assert "Traceback" not in result.message() and "resolution" in result.message()


def test_rules_between_options_are_checked():
    values = {name: option_value(load_config(PRESETS[0]), name) for name in FIELDS}
    values.update(use_object_template=True, use_style_template=True)
    result = collect_values(values)
    assert result.config is None and "pick one" in result.errors[""]


def test_token_preview_highlights_the_new_tokens():
    from ti_gui.tabs.token_tab import render_preview

    html = render_preview("a photo of {token} on a table", "mychar4", 3, 75)
    assert html.count('class="ti-new"') == 3
    assert re.search(r"\b9 / 75 tokens used", html)  # a photo of (3) + 3 + on a table (3)
    refused = render_preview("a photo of {token}", "cat", 1, 75)
    assert "already a token" in refused and 'class="ti-new"' not in refused


def test_dataset_check_reports_the_demo(demo_cache):
    from ti_gui.tabs.dataset_tab import report_markdown, run_doctor

    report = report_markdown(*run_doctor(load_config(ROOT / "presets" / "demo.toml")))
    assert "Ready to train" in report and "Steps per epoch: **240**" in report
    assert "24 images x 10 repeats" in report and "64x64: 240" in report
    bad = dataclasses.replace(load_config(ROOT / "presets" / "demo.toml"))
    bad.dataset.train_data_dir = "/no/such/folder"
    assert "/no/such/folder" in report_markdown(*run_doctor(bad))


def test_run_state_follows_the_events_and_shows_the_latest_run(tmp_path):
    with RunFolder(tmp_path / "runs" / "a") as run:
        run.status("loading")
        run.step(step=1, epoch=1, loss=0.5, lr=1e-3, it_s=2.0, eta_s=4.0, total_steps=3)
        run.checkpoint(step=1, path="x.safetensors", format="kohya")
        run.warning("careful")
        run.done(reason="stopped", path="x.safetensors")
    state = RunState(tmp_path / "runs" / "a")
    assert state.refresh() and not state.refresh()
    assert state.losses == [(1, 0.5)] and state.warnings == ["careful"]
    assert state.done["reason"] == "stopped" and state.checkpoints[0][0] == 1
    with RunFolder(tmp_path / "runs" / "a") as run:  # the same folder trained again
        run.status("loading")
    state.refresh()
    assert state.losses == [] and state.done is None and state.phase == "loading"
    assert list_runs(tmp_path / "runs") == [(tmp_path / "runs" / "a").resolve()]
    assert json.loads((tmp_path / "runs" / "a" / "events.jsonl").read_text().splitlines()[0])
