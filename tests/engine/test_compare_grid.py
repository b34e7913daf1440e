"""The checkpoint comparison grid: a run's checkpoints found in step order (pruned files left
out), each cell the very image the Generator makes for that checkpoint and seed, labels and
settings in the PNG, and mistakes that leave the loaded embeddings as they were."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ti_core.cli.main import main
from ti_core.embeddings.writers import save_embedding
from ti_core.errors import ConfigError, TiError
from ti_core.generation.generator import Generator
from ti_core.generation.grid import (
    MAX_CELLS,
    Checkpoint,
    compare_grid,
    run_checkpoints,
    run_model,
    run_trigger,
    save_grid,
    spread,
)
from ti_core.run_folder.writer import RunFolder

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"width": 64, "height": 64, "steps": 2}
PROMPT = "a photo of demotoy"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """7 demo steps saved every 2, keeping the last 2 step copies: step 2 is pruned."""
    out = tmp_path_factory.mktemp("run")
    args = ["train", "--config", "presets/demo.toml", "--max_train_steps", "7"]
    args += ["--save_every_n_steps", "2", "--save_last_n_steps", "2"]
    assert main([*args, "--output_dir", str(out), "--sample_every_n_steps", "0"]) == 0
    return out


@pytest.fixture(scope="module")
def generator() -> Generator:
    return Generator("demo:sd1", device="cpu")


def test_a_runs_checkpoints_in_step_order_without_pruned_files(run, tmp_path):
    checkpoints = run_checkpoints(run)
    assert [c.label for c in checkpoints] == ["step 4", "step 6", "final (step 7)"]
    assert [c.path.name for c in checkpoints] == [
        "demotoy-step00000004.safetensors",
        "demotoy-step00000006.safetensors",
        "demotoy.safetensors",
    ]
    events = (run / "events.jsonl").read_text()
    assert "demotoy-step00000002.safetensors" in events  # saved, then pruned
    assert run_model(run) == {
        "model": "demo:sd1",
        "v2": False,
        "v_parameterization": False,
        "vae": "",
    }
    assert run_trigger(run) == "demotoy"

    # A run folder moved elsewhere, and one with no events: the same checkpoints.
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    assert [c.path.parent for c in run_checkpoints(moved)] == [moved] * 3
    (moved / "events.jsonl").unlink()
    assert [c.label for c in run_checkpoints(moved)] == ["step 4", "step 6", "final (step 7)"]
    with pytest.raises(ConfigError, match="no config.toml"):
        run_model(tmp_path)


def test_step_copies_at_the_final_step_and_sdxl_halves_are_listed_once(tmp_path):
    vectors = [torch.randn(1, 8), torch.randn(1, 16)]
    with RunFolder(tmp_path) as folder:
        for step, suffix in ((5, "-step00000005"), (10, "-step00000010"), (10, "")):
            for path in save_embedding(
                tmp_path / f"xl{suffix}", vectors, token_string="xl", format="diffusers"
            ):
                folder.checkpoint(step=step, path=path, format="diffusers")
        folder.done(reason="finished", path=tmp_path / "xl.safetensors")
    checkpoints = run_checkpoints(tmp_path)
    assert [(c.path.name, c.label) for c in checkpoints] == [
        ("xl-step00000005.safetensors", "step 5"),
        ("xl.safetensors", "final (step 10)"),
    ]
    many = [Checkpoint(Path(f"{i}"), i, f"step {i}") for i in range(7)]
    assert [c.step for c in spread(many)] == [0, 2, 4, 6]
    assert spread(many[:3]) == many[:3]


def test_each_cell_is_the_image_the_generator_makes_for_that_checkpoint(generator, run, tmp_path):
    other = generator.add_vectors("othertoy", [torch.randn(1, generator.widths[0])])
    final = run / "demotoy.safetensors"
    generator.add_embedding(final, "demotoy")  # set aside for the grid, then put back
    try:
        rows = [run / "demotoy-step00000004.safetensors", final]
        seeds = [1, 2, 3]
        result = compare_grid(generator, rows, seeds, prompt=PROMPT, trigger="demotoy", **SMALL)
        assert list(generator.embeddings) == ["othertoy", "demotoy"]
        assert generator.embeddings["demotoy"].path == str(final)
        assert result.rows == ["step 4", "final (step 7)"]
        assert result.columns == ["seed 1", "seed 2", "seed 3"]
        assert result.warnings == []
        assert result.left > 0 and result.top > 0
        assert result.image.size == (result.left + 3 * 64, result.top + 2 * 64)

        grid = result.image
        cells = [[np.asarray(grid.crop(result.cell_box(r, c))) for c in range(3)] for r in range(2)]
        generator.remove_embedding("demotoy")
        for row, path in enumerate(rows):
            generator.add_embedding(path, "demotoy")
            for column, seed in enumerate(seeds):
                ((image, _),) = generator.generate(prompt=PROMPT, seed=seed, **SMALL)
                assert np.array_equal(cells[row][column], np.asarray(image)), (row, column)
            generator.remove_embedding("demotoy")
        assert not np.array_equal(cells[0][0], cells[1][0])  # the checkpoints differ
        assert not np.array_equal(cells[0][0], cells[0][1])  # and so do the seeds

        first, second = save_grid(result, tmp_path), save_grid(result, tmp_path)
        assert (first.name, second.name) == ("grid-00000.png", "grid-00001.png")
        text = Image.open(first).text
        assert json.loads(text["rows"]) == result.rows
        assert json.loads(text["columns"]) == result.columns
        assert json.loads(text["seeds"]) == seeds
        assert json.loads(text["checkpoints"]) == [str(path) for path in rows]
        assert (text["prompt"], text["trigger"], text["steps"]) == (PROMPT, "demotoy", "2")
    finally:
        for trigger in list(generator.embeddings):
            generator.remove_embedding(trigger)
    assert other.trigger == "othertoy"


def test_mistakes_are_clear_errors_that_leave_the_loaded_embeddings(generator, run, tmp_path):
    final = run / "demotoy.safetensors"
    generator.add_embedding(final, "demotoy")
    before = generator.encode_prompt(PROMPT)["prompt_embeds"]
    xl_vectors = [torch.randn(2, 32), torch.randn(2, 64)]
    (sdxl,) = save_embedding(tmp_path / "xltoy", xl_vectors, token_string="xltoy", family="sdxl")
    grid = {"prompt": PROMPT, "trigger": "demotoy", **SMALL}
    try:
        with pytest.raises(ConfigError, match="no checkpoints"):
            compare_grid(generator, [], [1], **grid)
        with pytest.raises(ConfigError, match="no seeds"):
            compare_grid(generator, [final], [], **grid)
        with pytest.raises(ConfigError, match=f"at most {MAX_CELLS}"):
            compare_grid(generator, [final] * 5, list(range(13)), **grid)
        with pytest.raises(TiError, match="missing.safetensors: checkpoint file not found"):
            compare_grid(generator, [final, tmp_path / "missing.safetensors"], [1], **grid)
        with pytest.raises(TiError, match=r"xltoy.safetensors: .*Use an embedding trained for"):
            compare_grid(generator, [final, sdxl], [1], **grid)
        with pytest.raises(TiError, match="steps = 0: expected at least 1"):
            compare_grid(generator, [final], [1], **{**grid, "steps": 0})
        assert list(generator.embeddings) == ["demotoy"]
        assert torch.equal(generator.encode_prompt(PROMPT)["prompt_embeds"], before)

        # No trigger in the prompt: a grid with a warning (every row alike), not an error.
        plain = compare_grid(generator, [final], [1], **{**grid, "prompt": "a toy", "steps": 1})
        assert "does not contain the trigger word 'demotoy'" in plain.warnings[0]
    finally:
        generator.remove_embedding("demotoy")


def test_worker_ops_list_compare_convert_and_survive_bad_grids(run, tmp_path):
    step4, final = run / "demotoy-step00000004.safetensors", run / "demotoy.safetensors"
    xl_vectors = [torch.randn(1, 32), torch.randn(1, 64)]
    (sdxl,) = save_embedding(tmp_path / "xltoy", xl_vectors, token_string="xltoy", family="sdxl")
    grid = {"op": "compare_grid", "seeds": [1, 2], "prompt": PROMPT, "trigger": "demotoy"}
    grid |= {"outdir": str(tmp_path / "grids"), **SMALL, "steps": 1}
    requests = [
        {"id": 1, "op": "list_checkpoints", "run": str(run)},
        {"id": 2, "op": "load_model", "model": "demo:sd1", "device": "cpu"},
        {"id": 3, "op": "load_embeddings", "paths": [str(final)]},
        {"id": 4, **grid, "checkpoints": [str(step4), str(final)]},
        {"id": 5, **grid, "checkpoints": [str(final), str(tmp_path / "gone.safetensors")]},
        {"id": 6, **grid, "checkpoints": [str(final), str(sdxl)]},
        {"id": 7, **grid, "checkpoints": [str(final)], "seed": 3},
        {"id": 8, "op": "compare_grid", "checkpoints": [str(final)], "seeds": [1]},
        {"id": 9, "op": "generate", "prompt": PROMPT, "outdir": str(tmp_path / "images"),
         "seed": 1, **SMALL, "steps": 1},
        {"id": 10, "op": "convert", "path": str(final), "to": "a1111",
         "out": str(tmp_path / "a1111") + "/"},
        {"id": 11, "op": "convert", "path": str(final), "to": "webui"},
        {"id": 12, "op": "list_checkpoints", "run": str(tmp_path / "no-run")},
        {"id": 13, "op": "ping"},
        {"id": 14, "op": "quit"},
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "ti_core", "serve"],
        input="".join(json.dumps(request) + "\n" for request in requests),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    by_id = {reply["id"]: reply for reply in map(json.loads, done.stdout.splitlines())}
    assert sorted(by_id) == list(range(1, 15))

    listed = by_id[1]
    assert [c["label"] for c in listed["checkpoints"]] == ["step 4", "step 6", "final (step 7)"]
    assert listed["checkpoints"][-1] == {"path": str(final), "step": 7, "label": "final (step 7)"}
    assert listed["model"] == {"model": "demo:sd1", "v2": False, "v_parameterization": False,
                               "vae": ""}  # fmt: skip
    assert listed["trigger"] == "demotoy"

    made = by_id[4]
    assert made["ok"], made
    assert (made["rows"], made["columns"]) == (["step 4", "final (step 7)"], ["seed 1", "seed 2"])
    assert made["warnings"] == [] and (made["cell_width"], made["cell_height"]) == (64, 64)
    assert Image.open(made["grid"]).size == (made["width"], made["height"])
    assert made["height"] > 2 * 64 and made["width"] > 2 * 64

    assert not by_id[5]["ok"] and "gone.safetensors: checkpoint file not found" in by_id[5]["error"]
    assert not by_id[6]["ok"] and "xltoy.safetensors" in by_id[6]["error"]
    assert "unknown field(s) seed" in by_id[7]["error"] and "compare_grid" in by_id[7]["hint"]
    assert "needs the field 'prompt'" in by_id[8]["error"]
    assert by_id[9]["ok"] and by_id[9]["images"][0]["settings"]["embeddings"] == "demotoy"
    assert by_id[10]["path"] == str(tmp_path / "a1111" / "demotoy.pt")
    assert Path(by_id[10]["path"]).is_file()
    assert not by_id[11]["ok"] and "kohya, a1111, diffusers" in by_id[11]["hint"]
    assert not by_id[12]["ok"] and "no such run folder" in by_id[12]["error"]
    (loaded,) = by_id[13]["embeddings"]  # the grid's checkpoints came and went; this stayed
    assert (loaded["trigger"], loaded["path"]) == ("demotoy", str(final))


def test_the_compare_command_writes_one_grid(run, tmp_path, capsys):
    args = ["compare", str(run), "--seeds", "1", "2", "--prompt", PROMPT, "--W", "64", "--H", "64"]
    args += ["--steps", "1", "--device", "cpu", "--outdir", str(tmp_path)]
    assert main(args) == 0
    path = Path(capsys.readouterr().out.strip().removeprefix("wrote "))
    assert path == tmp_path / "grid-00000.png"
    text = Image.open(path).text
    assert json.loads(text["rows"]) == ["step 4", "step 6", "final (step 7)"]  # all 3 (<= 4)
    assert (text["model"], text["trigger"]) == ("demo:sd1", "demotoy")

    assert main([*args, "--checkpoints", "demotoy-step00000002.safetensors"]) == 2
    assert "demotoy-step00000002.safetensors: checkpoint file not found" in capsys.readouterr().err
