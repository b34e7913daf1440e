"""Keep my settings: the form saved as the user's own preset (outside the install, listed with
the shipped ones, loaded back) and any TOML file opened into the form."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest
from gradio_client import Client

from ti_core.errors import ConfigError
from ti_gui import presets


@pytest.fixture
def user_presets(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "my presets"
    monkeypatch.setenv("TI_TRAINER_PRESETS", str(folder))
    return folder


def test_a_saved_preset_is_listed_after_the_shipped_ones_and_loads_back(user_presets):
    text = presets.read_preset("demo").replace("max_train_steps = ", "max_train_steps = 7 #")
    choice, path = presets.save_preset("my character", text)
    assert choice == "mine: my character" and path == user_presets / "my character.toml"
    names = presets.preset_names()
    assert names[: len(presets.shipped_names())] == presets.shipped_names()
    assert names[-1] == "mine: my character"
    assert tomllib.loads(presets.read_preset(choice))["training"]["max_train_steps"] == 7
    # saving again under the same name replaces it (the user's own file, no copies pile up)
    presets.save_preset("my character", text.replace("= 7 #", "= 9 #"))
    assert tomllib.loads(path.read_text())["training"]["max_train_steps"] == 9
    assert sorted(p.name for p in user_presets.iterdir()) == ["my character.toml"]


def test_the_user_folder_defaults_to_the_xdg_config_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("TI_TRAINER_PRESETS", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert presets.user_dir() == tmp_path / "ti-trainer" / "presets"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert presets.user_dir() == Path("~/.config/ti-trainer/presets").expanduser()


@pytest.mark.parametrize(
    ("name", "problem"),
    [("demo", "shipped preset's name"), ("../escape", "use letters"), ("", "use letters")],
)
def test_a_bad_or_taken_name_is_refused_and_nothing_is_written(user_presets, name, problem):
    with pytest.raises(ConfigError, match=problem):
        presets.save_preset(name, presets.read_preset("demo"))
    assert not user_presets.exists()


def test_a_config_that_would_not_load_is_not_saved(user_presets):
    with pytest.raises(ConfigError, match="max_train_step"):
        presets.save_preset("broken", "[training]\nmax_train_step = 5\n")
    assert presets.user_names() == []


def test_open_config_names_what_is_wrong_with_the_path(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        presets.open_config_file(str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="is a folder"):
        presets.open_config_file(str(tmp_path))
    with pytest.raises(ConfigError, match="Type or paste"):
        presets.open_config_file("  ")
    (tmp_path / "c.toml").write_text("[token]\ntoken_string = 'zq'\n")
    assert "zq" in presets.open_config_file(f'"{tmp_path / "c.toml"}"')


def test_the_gui_saves_the_form_as_a_preset_and_opens_a_config_file(gui_url, tmp_path):
    """Through the page's own endpoints, as the buttons call them; the GUI was started with
    TI_TRAINER_PRESETS pointing into the test session's temporary folder (tests/conftest.py)."""
    client = Client(gui_url, verbose=False)
    text = client.predict("demo", api_name="/read_preset").replace(
        'token_string = "', 'token_string = "zqmine'
    )
    status, dropdown = client.predict("mine-test", text, api_name="/save_preset")
    assert status.startswith("**Saved**") and "mine: mine-test" in status
    saved = Path(os.environ["TI_TRAINER_PRESETS"]) / "mine-test.toml"
    assert "zqmine" in saved.read_text()
    assert "zqmine" in client.predict("mine: mine-test", api_name="/read_preset")

    config = tmp_path / "from-sd-scripts.toml"  # sd-scripts' flat --config_file
    config.write_text('pretrained_model_name_or_path = "demo:sd1"\ntoken_string = "zqflat"\n')
    result = client.predict(str(config), api_name="/open_config")
    assert "zqflat" in result[0]  # the editor shows the file
    assert any("Loaded into the form" in str(value) for value in result)
    missing = client.predict(str(tmp_path / "missing.toml"), api_name="/open_config")
    assert any("Not opened" in str(value) and "not found" in str(value) for value in missing)
