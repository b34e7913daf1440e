"""A real `python gui.py` for the GUI tests, started as a user starts it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def start_gui(port: int) -> tuple[subprocess.Popen, str]:
    """Start gui.py on `port` (or the next free one); returns the process and its URL."""
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    process = subprocess.Popen(
        [sys.executable, "gui.py", "--no-browser", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 60
    url = None
    while url is None and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            pytest.fail(f"gui.py exited with {process.returncode}")
        if "http://127.0.0.1:" in line:
            url = line.split()[-1]
    assert url, "gui.py printed no URL within 60 s"
    for _ in range(100):  # the URL is printed just before the server accepts connections
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            time.sleep(0.2)
    # Keep reading its output, or a full pipe would block the GUI.
    threading.Thread(target=process.stdout.read, daemon=True).start()
    return process, url


def stop_gui(process: subprocess.Popen) -> None:
    process.terminate()  # the GUI ends its training child too (atexit)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def gui_url() -> Iterator[str]:
    process, url = start_gui(7960)
    try:
        yield url
    finally:
        stop_gui(process)


@pytest.fixture(scope="session")
def training_gui(demo_cache) -> Iterator[str]:
    """One GUI for the tests that train (one run at a time, as in real use); the demo model is
    built into the session's temporary cache (TI_TRAINER_CACHE, set by demo_cache)."""
    process, url = start_gui(7970)
    try:
        yield url
    finally:
        stop_gui(process)


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@contextmanager
def chromium_page(timeout_ms: int, **page_options) -> Iterator:
    """A page in Debian's chromium driven by Playwright (its own browser download does not
    work offline); skips the test when either is missing."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM):
        pytest.skip("chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(**page_options)
        page.set_default_timeout(timeout_ms)
        yield page
        browser.close()


def screenshot_path(name: str, tmp_path: Path) -> Path:
    """Where a browser test saves its screenshot: the test's temporary folder, or docs/ (the
    README's pictures) when TI_UPDATE_SCREENSHOTS=1, so a test run leaves the tree clean."""
    folder = ROOT / "docs" if os.environ.get("TI_UPDATE_SCREENSHOTS") == "1" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


MAX_TICKS = 15  # per axis: a chart with category axes draws one label per step or loss value
# The chart's axes as vega draws them in SVG: [its aria label, its number of tick labels]
# (the grid lines are axes too, without a label).
TICK_LABELS = """() => Array.from(document.querySelectorAll('#loss-chart g.role-axis[aria-label]'))
    .map(axis => [axis.getAttribute('aria-label'),
                  axis.querySelectorAll('.role-axis-label text').length])"""


def assert_chart_is_readable(page) -> None:
    """Two numeric axes with a handful of tick labels each."""
    page.wait_for_function(  # drawn with data (an empty chart has no loss range yet)
        f"() => {{ const axes = ({TICK_LABELS})(); "
        "return axes.length == 2 && axes.every(([label, ticks]) => ticks > 0); }"
    )
    axes = page.evaluate(TICK_LABELS)
    assert [label.split()[0] for label, _ in axes] == ["X-axis", "Y-axis"], axes
    for label, ticks in axes:
        assert 2 <= ticks <= MAX_TICKS, axes
        assert "linear scale" in label, axes  # a category axis is "a discrete scale"
