"""The Generate tab in a real browser (Debian chromium driven by Playwright): load demo:sd1,
type a prompt, press Generate, see the image with its settings in the gallery."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from conftest import chromium_page, screenshot_path

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def page():
    with chromium_page(120_000, viewport={"width": 1366, "height": 768}) as page:
        yield page


def fill(page, elem_id: str, value: str) -> None:
    page.locator(f"#{elem_id}").locator("input, textarea").first.fill(value)


def test_generate_one_image_in_a_browser(gui_url, page, tmp_path):
    page.goto(gui_url)
    # Keep the images out of the project's runs/: the Run tab's runs folder decides where.
    page.get_by_role("tab", name="Run").click()
    page.get_by_text("Past runs").click()
    runs_folder = page.get_by_label("Runs folder")
    runs_folder.fill(str(tmp_path))
    runs_folder.press("Enter")  # committed (a loaded machine could still send the old value)
    page.wait_for_timeout(500)

    page.get_by_role("tab", name="Generate").click()
    fill(page, "generate-model", "demo:sd1")
    page.locator("#generate-load").click()
    page.wait_for_function(
        "() => /Loaded:.*demo:sd1/.test(document.querySelector('#generate-model-status').innerText)"
    )
    fill(page, "generate-prompt", "a photo of a red cube")
    page.locator("#generate-prompt").locator("textarea").first.press("Tab")
    page.wait_for_function("() => /tokens used/.test(document.body.innerText)")
    for elem_id, value in (("generate-width", "64"), ("generate-height", "64")):
        fill(page, elem_id, value)
    fill(page, "generate-steps", "4")

    started, started_wall = time.monotonic(), time.time() - 1
    page.locator("#generate-button").click()
    page.wait_for_function(
        "() => /Saved 1 image/.test(document.querySelector('#generate-messages').innerText)"
    )
    page.locator("#generate-gallery img").first.wait_for()
    seconds = time.monotonic() - started
    print(f"Generate click to image shown: {seconds:.1f} s")

    shown = page.locator("#generate-gallery").inner_text()
    assert "Error" not in page.locator("#generate-messages").inner_text()
    message = page.locator("#generate-messages").inner_text()
    # The image goes where the message says: the Runs folder typed above, unless a loaded
    # machine sent the click before that value (then the default runs folder; cleaned up).
    folder = Path(re.search(r"Saved 1 image\(s\) in (\S+?)\.?$", message.strip()).group(1))
    saved = [p for p in folder.glob("*.png") if p.stat().st_mtime >= started_wall]
    assert len(saved) == 1, message
    if folder != tmp_path / "generated":
        for path in saved:
            path.unlink()
    page.locator("#generate-gallery img").first.click()  # the caption shows under the image
    caption = page.locator("#generate-gallery").inner_text()
    assert "4 steps" in shown + caption and "64x64" in shown + caption
    page.screenshot(path=str(screenshot_path("generate-tab.png", tmp_path)), full_page=True)

    # A bad file is a message in the tab, not a traceback; the loaded model stays.
    page.get_by_label("Embedding file").first.fill(str(tmp_path / "missing.safetensors"))
    page.get_by_role("button", name="Add embedding").click()
    page.wait_for_function(
        "() => /no such file/.test(document.querySelector('#generate-messages').innerText)"
    )
    assert "Traceback" not in page.locator("#generate-messages").inner_text()
    assert "demo:sd1" in page.locator("#generate-model-status").inner_text()
