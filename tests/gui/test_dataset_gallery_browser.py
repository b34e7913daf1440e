"""The Dataset tab's gallery in a real browser (Debian chromium driven by Playwright): load the
demo preset, show its 24 images with their captions, click one, edit its caption and Save (the
file on disk changes), Undo (it is back, byte for byte)."""

from __future__ import annotations

import re

import pytest
from conftest import chromium_page, screenshot_path

pytestmark = pytest.mark.browser

# The thumbnails a person sees: decoded images with a size, inside the gallery.
SHOWN_THUMBNAILS = """() => Array.from(document.querySelectorAll('#dataset-gallery .ti-card img'))
    .filter(img => img.complete && img.naturalWidth > 0 && img.getBoundingClientRect().width > 50)
    .length"""


def test_see_the_demo_images_and_edit_a_caption(gui_url, demo_cache, tmp_path):
    with chromium_page(90_000, viewport={"width": 1366, "height": 768}) as page:
        page.goto(gui_url)
        page.get_by_role("tab", name=re.compile("^Config")).click()
        page.get_by_role("button", name="Load preset").click()  # the demo preset is chosen
        page.get_by_text("Loaded into the form").wait_for()
        page.get_by_role("tab", name="Dataset").click()
        page.locator("#gallery-show").click()  # the first time builds the demo (seconds)
        page.get_by_text("images 1-24 of 24").wait_for()
        page.wait_for_function(f"() => ({SHOWN_THUMBNAILS})() == 24")
        cards = page.locator("#dataset-gallery .ti-card")
        assert cards.count() == 24
        assert page.locator("#dataset-gallery .ti-card .ti-new").count() == 24  # the token
        assert "64x64 -> 64x64 · x10" in cards.nth(0).inner_text()
        summary = page.locator("#gallery-summary").inner_text()
        assert "24 images x 10 repeats = 240 per epoch" in summary
        assert "use_object_template" in summary  # the demo trains on templates, and says so
        assert not page.locator("#gallery-next").is_enabled()  # one page

        caption_file = demo_cache / "demo" / "sd1" / "dataset" / "10_demotoy toy" / "005.txt"
        original = caption_file.read_bytes()
        cards.nth(5).click()
        editor = page.locator("#gallery-caption textarea")
        page.wait_for_function(
            "() => document.querySelector('#gallery-caption textarea').value.includes('demotoy')"
        )
        assert editor.input_value() == original.decode()
        page.locator("#gallery-editor img").wait_for()  # the image itself, full size

        editor.fill("demotoy toy, sitting on a red chair")
        page.locator("#gallery-save").click()
        page.locator("#gallery-status").get_by_text("Saved").wait_for()
        assert caption_file.read_bytes() == b"demotoy toy, sitting on a red chair\n"
        assert "sitting on a red chair" in cards.nth(5).inner_text()  # the card follows
        page.locator("#gallery-editor").scroll_into_view_if_needed()
        page.screenshot(path=str(screenshot_path("dataset-gallery.png", tmp_path)))

        page.locator("#gallery-undo").click()
        page.locator("#gallery-status").get_by_text("Undone").wait_for()
        assert caption_file.read_bytes() == original
        assert editor.input_value() == original.decode()
