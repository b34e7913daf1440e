"""What the form tells a user at the widget itself: a value a run cannot start with is framed in
red and explained in the widget's own info line (its help comes back once fixed), Train is
switched off and writes nothing; the Dataset tab's one-click caption fixes and their Undo."""

from __future__ import annotations

from pathlib import Path

import pytest

from ti_core.config.toml_io import load_config
from ti_gui.fields import INVALID_CLASS, PROBLEM_MARK, VALID_MESSAGE, check_ready, option_value

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "presets" / "demo.toml"


@pytest.fixture(scope="module")
def app():
    from ti_gui.app import build_app

    return build_app()


def handler(app, name: str):
    """A wired event's function by its name (the events are private: no API endpoint)."""
    return next(block.fn for block in app.fns.values() if getattr(block.fn, "__name__", "") == name)


def form_data(app, **changes) -> dict:
    """The demo preset as the widgets hold it, with some widgets changed (by option name)."""
    form = app.ti_form
    config = load_config(DEMO)
    values = {name: option_value(config, name) for name in form.widgets}
    values.update(changes)
    return {form[name]: value for name, value in values.items()}


def type_into(app, invalid: dict, **changes) -> tuple[dict, dict]:
    """Run the form's change handler as a keystroke does: (outputs, the new marked problems)."""
    data = form_data(app, **changes)
    state = next(block for block in app.fns.values() if block.fn.__name__ == "form_changed")
    invalid_state = next(c for c in state.inputs if c not in app.ti_form.widgets.values())
    out = handler(app, "form_changed")({**data, invalid_state: invalid})
    return out, out[invalid_state]


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("token_string", "", "token_string is empty"),
        ("token_string", "cat", "already a token the tokenizer knows"),
        ("pretrained_model_name_or_path", "/no/such/model.safetensors", "not found"),
        ("train_data_dir", "/no/such/dataset", "not found"),
        ("max_train_steps", 0, "expected at least 1"),
        ("learning_rate", "0.005:100, oops", "learning_rate"),
    ],
)
def test_a_bad_value_is_explained_at_its_widget_and_train_is_off(app, name, value, says):
    widget = app.ti_form[name]
    out, problems = type_into(app, {}, **{name: value})
    assert says in problems[name]
    assert out[widget]["elem_classes"] == [INVALID_CLASS]
    assert out[widget]["info"].startswith(PROBLEM_MARK) and says in out[widget]["info"]
    status = next(v for k, v in out.items() if getattr(k, "elem_id", "") == "form-status")
    assert not status.startswith(VALID_MESSAGE) and says in status
    train_enabled = handler(app, "train_enabled")(status)
    assert train_enabled["interactive"] is False

    fixed, problems = type_into(app, problems)  # the demo's own value again
    assert problems == {}
    assert fixed[widget]["elem_classes"] == [] and fixed[widget]["info"] == app.ti_form.help[name]
    assert handler(app, "train_enabled")(VALID_MESSAGE)["interactive"] is True


def test_train_with_a_bad_value_writes_no_run_folder(app, tmp_path):
    run_folder = tmp_path / "never"
    data = form_data(app, token_string="", output_dir=str(run_folder))
    others = {c: "" for block in app.fns.values() if getattr(block.fn, "__name__", "") == "start"
              for c in block.inputs if c not in data}  # fmt: skip
    out = handler(app, "start")({**data, **others})
    message = next(iter(out.values()))
    assert "Cannot train" in message and "token_string is empty" in message
    assert not run_folder.exists()


def test_ready_checks_pass_the_demo_and_hub_ids():
    config = load_config(DEMO)
    assert check_ready(config) == {}
    config.model.pretrained_model_name_or_path = "stabilityai/stable-diffusion-2-1"
    config.model.vae = "madebyollin/sdxl-vae-fp16-fix"
    assert check_ready(config) == {}
    config.model.pretrained_model_name_or_path = "models/missing.safetensors"
    config.token.weights = "/no/such/embedding.safetensors"
    config.dataset.train_data_dir = ""
    assert set(check_ready(config)) == {
        "pretrained_model_name_or_path",
        "weights",
        "train_data_dir",
    }


def by_id(app, elem_id: str):
    return next(block for block in app.blocks.values() if getattr(block, "elem_id", "") == elem_id)


def test_dataset_fixes_add_the_token_then_undo_puts_the_captions_back(app, tmp_path):
    from PIL import Image

    folder = tmp_path / "train" / "4_toy"
    folder.mkdir(parents=True)
    captions = {"a": "demotoy on a table", "b": "a red toy", "c": "1girl, smiling"}
    for shade, (stem, caption) in enumerate(captions.items()):
        Image.new("RGB", (64, 64), (200, 90, 30 * shade)).save(folder / f"{stem}.png")
        (folder / f"{stem}.txt").write_text(caption)
    Image.new("RGB", (64, 64), (20, 90, 30)).save(folder / "d.png")  # no caption file
    data = form_data(
        app,
        train_data_dir=str(tmp_path / "train"),
        caption_extension=".txt",
        use_object_template=False,  # the demo trains on templates: captions would not count
    )
    check = next(b for b in app.fns.values() if b.fn.__name__ == "check_dataset")
    plan_state = next(c for c in check.inputs if c not in app.ti_form.widgets.values())
    add, new, undo = (by_id(app, f"fix-{name}") for name in ("add-token", "new-files", "undo"))
    fixes, report = by_id(app, "dataset-fixes"), by_id(app, "dataset-report")

    out = handler(app, "check_dataset")({**data, plan_state: None})
    assert "The data has errors" in out[report]
    assert out[add]["value"] == "Add demotoy to these 2 captions" and out[add]["visible"]
    assert out[new]["value"] == "Write a caption file with demotoy for these 1 images"
    assert "b.txt" in out[fixes] and "a.txt" not in out[fixes] and not out[undo]["visible"]

    out = handler(app, "apply_fix_add_token")({**data, plan_state: out[plan_state]})
    assert (folder / "b.txt").read_text() == "demotoy, a red toy"
    assert (folder / "c.txt").read_text() == "demotoy, 1girl, smiling"
    assert (folder / "a.txt").read_text() == "demotoy on a table"
    assert "**Done:** 2 captions" in out[fixes] and not out[add]["visible"]  # re-checked
    assert out[undo]["visible"] and out[new]["visible"]

    out = handler(app, "apply_fix_new_caption_file")({**data, plan_state: out[plan_state]})
    assert (folder / "d.txt").read_text() == "demotoy, toy\n"
    assert "Ready to train" in out[report] and not out[new]["visible"]

    out = handler(app, "undo_fix")({**data, plan_state: out[plan_state]})  # the newest fix
    assert not (folder / "d.txt").exists() and "Undone" in out[fixes]
    out = handler(app, "undo_fix")({**data, plan_state: out[plan_state]})
    assert {stem: (folder / f"{stem}.txt").read_text() for stem in captions} == captions
    assert not out[undo]["visible"] and out[add]["visible"]


def picker_fn(app, fn_name: str, option: str):
    """The path picker handler `fn_name` of one option (found by the textbox it fills)."""
    textbox = app.ti_form[option]
    for block in app.fns.values():
        if block.fn.__name__ == fn_name and (textbox in block.outputs or textbox in block.inputs):
            return block.fn
    raise LookupError(fn_name, option)


def test_every_path_option_has_a_browse_button_that_fills_its_textbox(app, tmp_path):
    from ti_gui.path_picker import FOLDER_MARK, PATH_FIELDS, UP

    for name in PATH_FIELDS:
        assert by_id(app, f"browse-{name}").value.startswith("Browse")
    models = tmp_path / "models"
    (models / "sd15").mkdir(parents=True)
    (models / "sd15" / "v1-5.safetensors").write_bytes(b"")
    (models / "notes.txt").write_text("")

    panel, where, entries, folder = picker_fn(app, "open_panel", "pretrained_model_name_or_path")(
        str(models / "missing.safetensors")  # a path not there: start in its nearest folder
    )
    assert panel["visible"] and str(models) in where and folder == str(models)
    assert entries["choices"] == [UP, FOLDER_MARK + "sd15"]  # .txt is no model file

    pick = picker_fn(app, "pick", "pretrained_model_name_or_path")
    value, panel, where, entries, folder = pick(FOLDER_MARK + "sd15", folder)
    assert entries["choices"] == [UP, "v1-5.safetensors"] and panel["visible"]
    value, panel, *_ = pick("v1-5.safetensors", folder)
    assert value == str(models / "sd15" / "v1-5.safetensors") and not panel["visible"]

    open_data = picker_fn(app, "open_panel", "train_data_dir")
    _, _, entries, folder = open_data(str(models / "sd15"))
    assert entries["choices"] == [UP]  # folders only
    value, panel = picker_fn(app, "use_folder", "train_data_dir")(folder)
    assert value == str(models / "sd15") and not panel["visible"]


def test_a_picked_path_updates_the_config_like_typing(app):
    from ti_gui.path_picker import PATH_FIELDS

    changed = next(b for b in app.fns.values() if b.fn.__name__ == "form_changed")
    triggers = {(target[0], target[1]) for target in changed.targets}
    for name in PATH_FIELDS:  # Browse sets the value from the server: only .change fires
        assert (app.ti_form[name]._id, "change") in triggers, name
