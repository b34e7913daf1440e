"""Each tab as a newcomer sees it at 1366x768, with the demo preset loaded: its main control is
in view without scrolling (a person on a small laptop screen finds it), and the page shows no
error. The screenshots are the README's pictures (TI_UPDATE_SCREENSHOTS=1 writes them to docs/)."""

from __future__ import annotations

import re

import pytest
from conftest import chromium_page, screenshot_path

pytestmark = pytest.mark.browser

# tab name -> (the control a person comes to the tab for, the picture's file name)
TABS = {
    "Model": ("#field-pretrained_model_name_or_path", "tab-model.png"),
    "Dataset": ("#field-train_data_dir", "tab-dataset.png"),
    "Token": ("#field-token_string", "tab-token.png"),
    "Training": ("#field-learning_rate", "tab-training.png"),
    "Sampling & saving": ("#field-output_dir", "tab-sampling.png"),
    "Config (TOML)": ("#toml", "tab-config.png"),
}


def in_view(page, selector: str) -> bool:
    """The element's top left corner is inside the window, as a person would see it."""
    box = page.locator(selector).first.bounding_box()
    size = page.viewport_size
    return bool(box) and 0 <= box["y"] < size["height"] and 0 <= box["x"] < size["width"]


def test_every_tab_shows_its_main_control_on_a_laptop_screen(gui_url, tmp_path):
    with chromium_page(60_000, viewport={"width": 1366, "height": 768}) as page:
        page.goto(gui_url)
        page.locator("#start-demo").wait_for()  # a fresh page opens on Start
        assert in_view(page, "#start-demo")
        page.get_by_role("tab", name=re.compile("^Config")).click()
        page.get_by_role("button", name="Load preset").click()
        page.get_by_text("Loaded into the form").wait_for()
        for name, (selector, picture) in TABS.items():
            page.get_by_role("tab", name=name, exact=True).click()
            page.locator(selector).first.wait_for(state="visible")
            assert in_view(page, selector), f"{name}: {selector} is below the window"
            page.screenshot(path=str(screenshot_path(picture, tmp_path)))
        assert page.locator(".toast-body.error, .error-message").count() == 0
