"""The GUI in a real browser (Debian chromium driven by Playwright): load the demo preset,
Train, watch the step count move, reload the page and find the run again, Stop it."""

from __future__ import annotations

import re

import pytest
from conftest import chromium_page, screenshot_path

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def page():
    with chromium_page(60_000) as page:
        yield page


def shown_step(page) -> int:
    text = page.locator("#run-progress").inner_text()
    match = re.search(r"step (\d+) / (\d+)", text)
    return int(match.group(1)) if match else -1


def test_train_and_stop_the_demo_in_a_browser(training_gui, page, tmp_path):
    page.set_viewport_size({"width": 1280, "height": 1000})
    page.goto(training_gui)
    page.get_by_role("button", name="Load preset").click()
    page.get_by_text("Loaded into the form").wait_for()

    page.get_by_role("tab", name="Sampling & saving").click()
    output_dir = page.locator("#field-output_dir").locator("input, textarea").first
    output_dir.fill(str(tmp_path / "browser-run"))
    page.get_by_role("tab", name="Run").click()
    page.get_by_role("button", name="Train").click()
    page.get_by_text("Started a run in").wait_for()
    page.wait_for_function(
        "() => /step [1-9]\\d* \\/ 200/.test(document.querySelector('#run-progress').innerText)"
    )
    first = shown_step(page)
    page.wait_for_function(
        f"() => (document.querySelector('#run-progress').innerText.match(/step (\\d+) \\//) "
        f"|| [0, 0])[1] > {first}"
    )

    # What a new user waits for: the loss chart drawn and a sample image (demo: every 50 steps).
    page.locator("#loss-chart canvas, #loss-chart svg").first.wait_for()
    page.locator("#samples-gallery img").first.wait_for()
    page.locator("#run-progress").scroll_into_view_if_needed()
    page.screenshot(path=str(screenshot_path("run-view.png", tmp_path)))

    page.reload()  # the run lives in the GUI process: a new page finds it again
    page.get_by_role("tab", name="Run").click()
    page.wait_for_function(
        "() => /Running/.test(document.querySelector('#run-progress').innerText)"
    )
    assert str(tmp_path / "browser-run") in page.locator("#run-progress").inner_text()
    assert shown_step(page) > first

    page.get_by_role("button", name="Stop").click()
    page.get_by_text("Stopping: the run saves its embedding").wait_for()
    page.wait_for_function(
        "() => /Stopped/.test(document.querySelector('#run-progress').innerText)"
    )
    final = tmp_path / "browser-run" / "demotoy.safetensors"
    assert final.is_file()
    page.get_by_text(f"Final embedding: {final}").wait_for()  # the path is shown
