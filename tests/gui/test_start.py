"""The Start tab: a fresh user lands on it; "My images" picks the preset from the model's family
and reads a plain or an N_name image folder; a pasted sd-scripts command fills the form; "Try
the demo" starts a run. The choices without a browser first, then the page in chromium."""

from __future__ import annotations

import json
import re
import shutil
import struct
import time
from pathlib import Path

import pytest
from conftest import ROOT, assert_chart_is_readable, chromium_page, screenshot_path

from tests.unit.test_command_line import GUIDE_COMMAND
from ti_core.data.dataset_toml import load_dataset_config
from ti_core.errors import TiError
from ti_core.models.checkpoint_info import SD2_TEXT_KEY, SDXL_TEXT_KEY, UNET_KEY
from ti_gui.tabs.start_tab import DEMO_MARKER, config_for_images, model_choice


@pytest.fixture(scope="module")
def demo() -> Path:
    """The sd1 demo (model/, model.safetensors, dataset/) in the session's demo cache."""
    from ti_core.models.demo import demo_dir

    return demo_dir("sd1")


def header_only_safetensors(path: Path, keys: list[str], metadata: dict | None = None) -> Path:
    """A .safetensors file with these tensor names (one float each): what the GUI reads of it."""
    header: dict = {key: {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]}
                    for i, key in enumerate(keys)}  # fmt: skip
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(4 * len(keys)))
    return path


def test_the_marker_name_is_the_demos():
    from ti_core.models.demo import MARKER_FILE

    assert DEMO_MARKER == MARKER_FILE


def test_the_models_family_picks_the_preset(demo, tmp_path):
    # the demo's own files: the demo preset (64 px, its images' size)
    for model in (demo / "model.safetensors", demo / "model", "demo:sd1"):
        choice = config_for_images(str(model), str(demo / "dataset"), "demotoy", "toy")
        assert choice.preset == "demo" and choice.config.dataset.resolution == "64"
    # the same weights elsewhere are an SD 1.x file like any other
    other = shutil.copy(demo / "model.safetensors", tmp_path / "other.safetensors")
    choice = config_for_images(str(other), str(demo / "dataset"), "mychar4", "")
    assert choice.preset == "sd15_character" and choice.config.dataset.resolution == "512"
    assert choice.config.token.init_word == "person"  # the preset's, as none was typed
    sdxl = header_only_safetensors(tmp_path / "xl.safetensors", [SDXL_TEXT_KEY, UNET_KEY])
    choice = config_for_images(str(sdxl), str(demo / "dataset"), "mychar4", "woman")
    assert choice.preset == "sdxl" and choice.config.dataset.resolution == "1024"
    assert choice.config.token.init_word == "woman"
    base = header_only_safetensors(
        tmp_path / "sd2.safetensors",
        [SD2_TEXT_KEY, UNET_KEY],
        {"modelspec.prediction_type": "epsilon"},
    )
    choice = config_for_images(str(base), str(demo / "dataset"), "mychar4", "")
    assert choice.preset == "sd2_768v" and choice.config.dataset.resolution == "512"
    assert not choice.config.model.v_parameterization  # the file says epsilon: SD 2.x base
    assert model_choice("stabilityai/stable-diffusion-2-1").v_parameterization is None
    lora = header_only_safetensors(tmp_path / "lora.safetensors", ["a.lora_down.weight", "b", "c"])
    with pytest.raises(TiError, match="this is a LoRA"):
        config_for_images(str(lora), str(demo / "dataset"), "mychar4", "")


def test_a_plain_image_folder_becomes_a_dataset_toml(demo, tmp_path):
    plain = tmp_path / "my pictures"
    shutil.copytree(demo / "dataset" / "10_demotoy toy", plain)
    choice = config_for_images("demo:sd1", str(plain), "demotoy", "toy")
    data = choice.config.dataset
    assert data.train_data_dir == "" and data.dataset_config.endswith(".toml")
    (subset,) = load_dataset_config(data.dataset_config)[0].subsets
    assert Path(subset.image_dir) == plain and subset.num_repeats == 1
    assert subset.class_tokens == "demotoy toy"  # what images without a caption are called
    # a plain folder named N_name keeps the repeats and class tokens sd-scripts reads there
    named = config_for_images("demo:sd1", str(demo / "dataset" / "10_demotoy toy"), "x1", "")
    (subset,) = load_dataset_config(named.config.dataset.dataset_config)[0].subsets
    assert (subset.num_repeats, subset.class_tokens) == (10, "demotoy toy")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TiError, match="no images in it and no N_name subfolders"):
        config_for_images("demo:sd1", str(empty), "demotoy", "toy")


# ---- in a real browser ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def page():
    with chromium_page(120_000, viewport={"width": 1366, "height": 768}) as page:
        yield page


def fill(page, elem_id: str, value: str) -> None:
    page.locator(f"#{elem_id}").locator("input, textarea").first.fill(value)


def field_value(page, tab: str, name: str) -> str:
    """An option's widget as the user sees it, on its tab (opened when it is not open yet)."""
    button = page.get_by_role("tab", name=tab)
    if button.get_attribute("aria-selected") != "true":
        button.click()
    return page.locator(f"#field-{name}").locator("input, textarea").first.input_value()


def wait_for_text(page, elem_id: str, pattern: str) -> None:
    page.wait_for_function(
        f"() => /{pattern}/.test((document.querySelector('#{elem_id}') || {{}}).innerText)"
    )


@pytest.mark.browser
def test_start_screen_in_a_browser(training_gui, page, demo, tmp_path):
    demo_runs = ROOT / "runs" / "demo"
    had_demo_runs = demo_runs.exists()
    page.goto(training_gui)
    start = page.get_by_role("tab", name="Start")
    assert start.get_attribute("aria-selected") == "true"  # the page opens on Start
    page.locator("#start-demo").wait_for()
    page.screenshot(path=str(screenshot_path("start.png", tmp_path)))

    # My images: the demo's model file and image folder
    fill(page, "start-model", str(demo / "model.safetensors"))
    fill(page, "start-images", str(demo / "dataset"))
    fill(page, "start-token", "demotoy")
    fill(page, "start-init-word", "toy")
    page.locator("#start-fill").click()
    wait_for_text(page, "start-images-status", "Filled the form")
    wait_for_text(page, "start-report", "Ready to train")  # the dataset doctor ran
    page.screenshot(path=str(screenshot_path("start-my-images.png", tmp_path)), full_page=True)
    assert field_value(page, "Model", "pretrained_model_name_or_path") == str(
        demo / "model.safetensors"
    )
    assert field_value(page, "Dataset", "resolution") == "64"
    assert field_value(page, "Dataset", "train_data_dir") == str(demo / "dataset")

    # Paste: the sd-scripts TI guide's command
    start.click()
    fill(page, "start-paste", GUIDE_COMMAND)
    page.locator("#start-read").click()
    wait_for_text(page, "start-paste-status", "Filled the form")
    assert "placeholder" in page.locator("#start-paste-status").inner_text()
    assert field_value(page, "Token", "token_string") == "mychar4"
    assert field_value(page, "Token", "init_word") == "cute"
    assert float(field_value(page, "Training", "learning_rate")) == 1e-6

    # Try the demo: one click loads the demo preset and trains; Stop in the run bar ends it
    start.click()
    clicked = time.monotonic()
    page.locator("#start-demo").click()
    # the Run view opens by itself once the run has started, where its chart and samples are
    page.wait_for_selector("#run-tab-button[aria-selected='true']", timeout=120_000)
    page.locator("#samples-gallery img").first.wait_for(timeout=240_000)  # the step-50 sample
    assert_chart_is_readable(page)
    print(f"Try the demo: a sample and a readable chart {time.monotonic() - clicked:.0f} s after")
    start.click()
    wait_for_text(page, "start-demo-status", "Started a run in")
    assert "bar above follows it" in page.locator("#start-demo-status").inner_text()
    assert field_value(page, "Token", "token_string") == "demotoy"  # the form holds the demo
    page.wait_for_function(
        "() => /step [1-9]\\d* \\//.test(document.querySelector('#run-bar-status').innerText)",
        timeout=240_000,
    )
    assert re.search(r"step \d+ / 200", page.inner_text("#run-bar"))
    page.locator("#stop-button").click()
    page.wait_for_function(
        "() => /Stopped/.test(document.querySelector('#run-bar').innerText)", timeout=120_000
    )
    if not had_demo_runs:  # the demo preset trains into runs/demo; leave no new folder behind
        shutil.rmtree(demo_runs, ignore_errors=True)
