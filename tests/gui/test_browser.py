"""The GUI in a real browser (Debian chromium driven by Playwright), as a new user meets it:
load the demo preset, press Train in the run bar from another tab, follow the run there and in
the browser tab's title, read the loss chart, reload the page and find the run again, Stop."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import assert_chart_is_readable, chromium_page, screenshot_path

from ti_core.run_folder.reader import read_run_folder

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def page():
    with chromium_page(60_000) as page:
        yield page


def bar_step(page) -> int:
    text = page.locator("#run-bar-status").inner_text()
    match = re.search(r"step (\d+) / (\d+)", text)
    return int(match.group(1)) if match else -1


def wait_for_bar_step_above(page, step: int) -> None:
    page.wait_for_function(
        "() => (document.querySelector('#run-bar-status').innerText.match(/step (\\d+) \\//) "
        f"|| [0, -1])[1] > {step}"
    )


def test_train_and_stop_the_demo_from_the_run_bar(training_gui, page, tmp_path):
    page.set_viewport_size({"width": 1366, "height": 768})
    page.goto(training_gui)
    page.get_by_role("tab", name="Config").click()  # Gradio builds a tab's contents on opening
    page.get_by_role("button", name="Load preset").click()
    page.get_by_text("Loaded into the form").wait_for()
    page.get_by_role("tab", name="Sampling & saving").click()
    output_dir = page.locator("#field-output_dir").locator("input, textarea").first
    output_dir.fill(str(tmp_path / "browser-run"))

    # The Run tab open on an empty chart (no past run in this folder), as a new user has it.
    page.get_by_role("tab", name="Run").click()
    page.get_by_text("Past runs").click()
    runs_folder = page.get_by_label("Runs folder")
    runs_folder.fill(str(tmp_path))
    runs_folder.press("Enter")
    page.get_by_role("tab", name="Model").click()
    page.locator("#train-button").click()  # the run bar: Train from any tab
    page.get_by_text("Started a run in").wait_for()

    wait_for_bar_step_above(page, 0)
    first = bar_step(page)
    # it/s and ETA come once the run has timed a step (the first poll may see only the step)
    page.wait_for_function(
        "() => /step \\d+ \\/ 200 \\(\\d+%\\) · [\\d.]+ it\\/s · ETA/"
        ".test(document.querySelector('#run-bar').innerText)"
    )
    page.wait_for_function("() => /^\\[\\d+%\\] /.test(document.title)")  # seen from other tabs
    page.screenshot(path=str(screenshot_path("run-bar.png", tmp_path)))

    page.get_by_role("tab", name="Run").click()
    wait_for_bar_step_above(page, first)
    assert_chart_is_readable(page)  # steps arriving
    page.locator("#samples-gallery img").first.wait_for()  # the demo samples every 50 steps
    page.locator("#sample-grid table.ti-grid img").first.wait_for()  # the grid fills in too
    assert_chart_is_readable(page)
    page.evaluate("window.scrollBy(0, 250)")  # the chart whole (the run bar: run-bar.png)
    page.screenshot(path=str(screenshot_path("run-view.png", tmp_path)))

    page.reload()  # the run lives in the GUI process: a new page finds it again
    page.get_by_role("tab", name="Run").click()
    page.wait_for_function(
        "() => /Running/.test(document.querySelector('#run-progress').innerText)"
    )
    assert str(tmp_path / "browser-run") in page.locator("#run-progress").inner_text()
    wait_for_bar_step_above(page, first)  # the bar too
    assert_chart_is_readable(page)

    page.get_by_role("tab", name="Model").click()
    page.locator("#stop-button").click()
    page.get_by_text("Stopping: the run saves its embedding").wait_for()
    page.wait_for_function("() => /Stopped/.test(document.querySelector('#run-bar').innerText)")
    page.wait_for_function("() => document.title.startsWith('[Stopped] ')")
    final = tmp_path / "browser-run" / "demotoy.safetensors"
    assert final.is_file()
    page.get_by_role("tab", name="Run").click()
    page.get_by_text(f"Final embedding: {final}").wait_for()  # the path is shown
    assert_chart_is_readable(page)  # and after the run ended

    # The step to keep, shown with its reason; Keep this step makes it the final file.
    suggestion = read_run_folder(tmp_path / "browser-run").latest.suggestion
    assert suggestion is not None
    page.wait_for_function(
        "() => /Suggested step to keep: \\d+/"
        ".test(document.querySelector('#run-insight').innerText)"
    )
    kept = Path(suggestion["path"]).read_bytes()
    page.locator("#keep-step").click()
    page.wait_for_function("() => /Kept step/.test(document.querySelector('#run-bar').innerText)")
    assert final.read_bytes() == kept
    if Path(suggestion["path"]) != final:
        assert (final.parent / "demotoy-final-replaced.safetensors").is_file()
