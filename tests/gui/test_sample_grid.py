"""The Run view's step x prompt grid: drawn from a real run folder (the demo trained for a few
steps in a child process), then in a real browser a click on a cell opens Generate with that
checkpoint loaded and that prompt and seed filled in."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, chromium_page, screenshot_path
from PIL import Image

from ti_core.errors import TiError
from ti_core.run_folder.reader import read_run_folder
from ti_core.run_folder.writer import RunFolder
from ti_gui import sample_grid_html
from ti_gui.sample_grid import NOT_SAVED, PRUNED, SAVED, build_grid, pick

PROMPTS = """a photo of demotoy on a table --w 64 --h 64 --d 7 --s 2
a painting of demotoy --n blurry --w 64 --h 64 --d 8 --s 2 --l 5
demotoy on the beach, with a long prompt that the column heading shortens --w 64 --h 64 --s 2
"""


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory, demo_cache) -> Path:
    """Six steps, a copy every 2 and samples every 3 (and at the start): steps 0 and 3 sample
    without saving, 2 and 4 save without sampling, 6 does both."""
    root = tmp_path_factory.mktemp("runs")
    prompts = root / "prompts.txt"
    prompts.write_text(PROMPTS)
    command = [sys.executable, "-m", "ti_core", "train",
               "--pretrained_model_name_or_path", "demo:sd1", "--train_data_dir", "demo:sd1",
               "--caption_extension", ".txt", "--resolution", "64", "--token_string", "demotoy",
               "--init_word", "toy", "--output_dir", str(root / "run"), "--seed", "40",
               "--max_train_steps", "6", "--learning_rate", "0.05", "--save_every_n_steps", "2",
               "--sample_every_n_steps", "3", "--sample_at_first",
               "--sample_prompts", str(prompts)]  # fmt: skip
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "TI_TRAINER_CACHE": str(demo_cache)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return root / "run"


def test_rows_are_saved_steps_and_columns_the_prompts(run_folder, tmp_path):
    grid = build_grid(read_run_folder(run_folder))
    assert [(c.index, c.seed) for c in grid.columns] == [(0, 7), (1, 8), (2, 42)]  # seed + index
    assert grid.columns[1].prompt == "a painting of demotoy"
    assert [(row.step, row.status) for row in grid.rows] == [
        (0, NOT_SAVED), (2, SAVED), (3, NOT_SAVED), (4, SAVED), (6, SAVED),
    ]  # fmt: skip
    last = grid.row(6)
    # The numbered copy, not the final file that a later save or Keep this step writes over.
    assert last.checkpoint == run_folder / "demotoy-step00000006.safetensors"
    assert last.cells == {i: run_folder / "samples" / f"000006-0{i}-{s}.png"
                          for i, s in ((0, 7), (1, 8), (2, 42))}  # fmt: skip
    assert grid.row(2).cells == {} and grid.row(3).checkpoint is None
    assert not grid.scored

    page = sample_grid_html.render(grid, tmp_path / "thumbs")
    assert page.count("<tr class=") == 5 and page.count("not saved") == 2
    clickable = re.findall(r'data-step="(\d+)" data-prompt="(\d+)"', page)
    assert clickable == [("6", "0"), ("6", "1"), ("6", "2")]  # a not-saved row does not click
    long_prompt = PROMPTS.splitlines()[2].split(" --")[0]
    heading = re.search(f'<th class="ti-prompt" title="{long_prompt}">([^<]+)<small>', page)
    assert heading[1].endswith("…") and len(heading[1]) <= sample_grid_html.HEADING_CHARS
    assert page.count('class="ti-empty"') == 6  # steps 2 and 4: saved, no samples
    assert "scores" not in page
    thumbs = re.findall(r'src="gradio_api/file=([^"]+)"', page)
    assert len(thumbs) == 9 and all(Path(t).parent == tmp_path / "thumbs" for t in thumbs)


def test_scores_pruned_files_and_redraws(run_folder, tmp_path):
    copy = tmp_path / "moved"  # a run folder moved since: its events name the old paths
    shutil.copytree(run_folder, copy)
    events = copy / "events.jsonl"
    events.write_text(events.read_text().replace(str(run_folder), str(tmp_path / "gone")))
    before = build_grid(read_run_folder(copy))
    assert before.row(6).checkpoint == copy / "demotoy-step00000006.safetensors"
    with RunFolder(copy) as run:
        run.score(step=4, clip_i=0.61, clip_t=0.25, images=2)
        run.score(step=6, clip_i=0.72, clip_t=0.21, images=2)
    (copy / "demotoy-step00000006.safetensors").unlink()  # pruned (save_last_n_steps)
    assert build_grid(read_run_folder(copy)).row(6).checkpoint == copy / "demotoy.safetensors"
    (copy / "demotoy.safetensors").unlink()  # the final file held step 6 too; now none does
    grid = build_grid(read_run_folder(copy))
    assert grid.key() != before.key()  # the page is drawn again
    assert grid.row(6).status == PRUNED and grid.row(6).checkpoint is None
    assert grid.scored and grid.row(4).score["clip_i"] == 0.61 and grid.row(2).score is None
    page = sample_grid_html.render(grid, tmp_path / "thumbs")
    assert "<b>CLIP-I 0.720</b>" in page and "<b>CLIP-T 0.250</b>" in page  # the best of each
    assert "data-step=" not in page  # step 6's file is gone: nothing left to open
    with pytest.raises(TiError, match="no embedding file on disk"):
        pick(grid, 6, 0)
    assert build_grid(read_run_folder(copy)).key() == grid.key()  # unchanged: not drawn again


def test_a_cell_carries_its_checkpoint_and_settings(run_folder):
    grid = build_grid(read_run_folder(run_folder))
    chosen = pick(grid, 6, 1)
    assert chosen.checkpoint == run_folder / "demotoy-step00000006.safetensors"
    assert chosen.settings == {
        "prompt": "a painting of demotoy", "negative_prompt": "blurry", "seed": 8, "steps": 2,
        "scale": 5.0, "sampler": "ddim", "width": 64, "height": 64,
    }  # fmt: skip
    with pytest.raises(TiError, match="not saved"):
        pick(grid, 3, 0)
    with pytest.raises(TiError, match="no sample of prompt 2"):
        pick(grid, 4, 1)


def test_forty_saved_steps_by_six_prompts_stay_light(tmp_path):
    """What the browser gets for a long run: small thumbnails and a page drawn in well under the
    Run view's one-second poll once they exist."""
    folder = tmp_path / "long"
    with RunFolder(folder) as run:
        run.status("loading")
        for step in range(25, 1001, 25):
            embedding = folder / f"demotoy-step{step:08d}.safetensors"
            embedding.write_bytes(b"stands for an embedding file")
            run.checkpoint(step=step, path=embedding, format="kohya")
            for index in range(6):
                path = run.samples_dir / f"{step:06d}-{index:02d}-{index}.png"
                Image.new("RGB", (512, 512), (step % 256, 40 * index, 90)).save(path)
                run.sample(step=step, path=path, prompt=f"prompt number {index} of demotoy")
    grid = build_grid(read_run_folder(folder))
    assert len(grid.rows) == 40 and len(grid.columns) == 6
    page = sample_grid_html.render(grid, tmp_path / "thumbs")
    started = time.monotonic()
    again = sample_grid_html.render(build_grid(read_run_folder(folder)), tmp_path / "thumbs")
    seconds = time.monotonic() - started
    print(f"40 x 6 grid: {len(page) / 1024:.0f} KiB of HTML, redrawn in {seconds:.2f} s")
    assert again == page and seconds < 1.0 and len(page) < 150_000
    thumbs = list((tmp_path / "thumbs").glob("*.jpg"))
    assert len(thumbs) == 240
    assert all(max(Image.open(t).size) <= sample_grid_html.THUMBNAIL_PX for t in thumbs)


# ---- in a browser -----------------------------------------------------------------------------


@pytest.mark.browser
def test_a_click_opens_generate_with_that_checkpoint_and_prompt(gui_url, run_folder, tmp_path):
    with chromium_page(120_000, viewport={"width": 1366, "height": 768}) as page:
        page.goto(gui_url)
        page.get_by_role("tab", name="Run").click()
        page.get_by_text("Past runs").click()
        runs_folder = page.get_by_label("Runs folder")
        runs_folder.fill(str(run_folder.parent))
        runs_folder.press("Enter")  # the newest run in it is shown: ours
        page.locator('#sample-grid button[data-step="6"]').first.wait_for()
        assert page.locator("#sample-grid button[data-step]").count() == 3  # step 6's images
        assert page.locator("#sample-grid tbody tr").count() == 5
        page.locator("#sample-grid tbody tr").last.scroll_into_view_if_needed()
        page.screenshot(path=str(screenshot_path("sample-grid.png", tmp_path)))

        checkpoint = run_folder / "demotoy-step00000006.safetensors"
        open_cell(page, 1, "a painting of demotoy")
        assert page.locator("#generate-seed input").first.input_value() == "8"
        assert page.locator("#generate-negative-prompt textarea").first.input_value() == "blurry"
        assert "demo:sd1" in page.locator("#generate-model-status").inner_text()
        assert loaded_embeddings(page) == [["demotoy", "1", "kohya", str(checkpoint)]]

        # Another prompt: the same trigger word is loaded again, not refused as taken.
        page.get_by_role("tab", name="Run").click()
        open_cell(page, 0, "a photo of demotoy on a table")
        assert page.locator("#generate-seed input").first.input_value() == "7"
        assert page.locator("#generate-negative-prompt textarea").first.input_value() == ""
        assert loaded_embeddings(page) == [["demotoy", "1", "kohya", str(checkpoint)]]


def open_cell(page, prompt_index: int, prompt: str) -> None:
    """Click step 6's image of a prompt; wait for Generate to show it, filled in and loaded."""
    page.locator(f'#sample-grid button[data-step="6"][data-prompt="{prompt_index}"]').click()
    page.locator("#generate-prompt textarea").first.wait_for(state="visible")  # Generate shows
    page.wait_for_function(
        "(prompt) => document.querySelector('#generate-prompt textarea')?.value === prompt",
        arg=prompt,
    )
    page.wait_for_function(
        "() => /Loaded .*demotoy-step00000006\\.safetensors/.test("
        "document.querySelector('#generate-messages').innerText.trim())"
    )
    assert "Error" not in page.locator("#generate-messages").inner_text()
    assert "demotoy-step00000006" in page.locator("#generate-embeddings").inner_text()


def loaded_embeddings(page) -> list[list[str]]:
    """Generate's table of loaded embeddings: trigger, vectors, format, file per row."""
    cells = page.locator("#generate-embeddings").inner_text().split()
    body = cells[cells.index("file") + 1 :]
    return [body[i : i + 4] for i in range(0, len(body), 4)]
