"""The Generate tab's worker client against the real `python -m ti_core serve`, and the tab's
functions: defaults from a run folder, messages for bad input, captions, the checkpoint grid,
the inspector and conversion. Uses the tiny demo:sd1 model."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file

from ti_core.generation.options import OPTIONS
from ti_gui import generate_view
from ti_gui.generation_client import GenerationClient
from ti_gui.tabs import embedding_tools_tab

DEMO = "demo:sd1"
DEMO_WIDTH = 32  # the demo SD1 text encoder's width


def kohya_file(path: Path, vectors: int = 1, width: int = DEMO_WIDTH, seed: int = 0) -> Path:
    """A kohya-format embedding: emb_params (vectors x width)."""
    data = np.random.default_rng(seed).normal(0, 0.1, (vectors, width)).astype(np.float32)
    save_file({"emb_params": data}, str(path))
    return path


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> GenerationClient:
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    client = GenerationClient(log_path=log)
    reply = client.request("load_model", model=DEMO)
    assert reply["ok"], reply
    yield client
    client.shutdown()


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """A run folder as a demo run leaves it: config.toml, events.jsonl, step and final files."""
    runs = tmp_path_factory.mktemp("runs")
    folder = runs / "demo"
    folder.mkdir()
    (folder / "config.toml").write_text(
        '[model]\npretrained_model_name_or_path = "demo:sd1"\nclip_skip = 2\n'
        '[token]\ntoken_string = "gridtoy"\n[saving]\noutput_name = "gridtoy"\n'
    )
    events = []
    for step in (10, 20):
        path = kohya_file(folder / f"gridtoy-step{step:08d}.safetensors", seed=step)
        events.append({"type": "checkpoint", "time": 1.0, "step": step, "path": str(path)})
    final = kohya_file(folder / "gridtoy.safetensors", seed=30)
    events.append({"type": "checkpoint", "time": 2.0, "step": 30, "path": str(final)})
    events.append({"type": "done", "time": 2.0, "reason": "finished", "path": str(final)})
    (folder / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return folder


# ---- the client and the worker --------------------------------------------------------------


def test_a_bad_request_is_answered_and_the_worker_stays_up(client):
    pid = client.process.pid
    reply = client.request("paint_me_a_picture")
    assert not reply["ok"] and "unknown op" in reply["error"] and reply["hint"]
    reply = client.request("load_embeddings", paths=["/nowhere/x.safetensors"])
    assert not reply["ok"] and "Traceback" not in reply["error"]
    assert client.request("ping")["pong"] and client.process.pid == pid


def test_a_killed_worker_is_started_again_with_its_model_and_embeddings(client, tmp_path):
    path = kohya_file(tmp_path / "killtest.safetensors", vectors=2)
    assert client.request("load_embeddings", paths=[str(path)], triggers=["killtoy"])["ok"]
    os.kill(client.process.pid, signal.SIGKILL)
    client.process.wait(timeout=10)

    reply = client.request("ping")
    assert reply["ok"] and DEMO in reply["model"]
    assert "started again" in reply["notices"][0] and "1 embedding" in reply["notices"][0]
    assert [e["trigger"] for e in reply["embeddings"]] == ["killtoy"]
    assert client.request("remove_embedding", trigger="killtoy")["ok"]


def test_a_hung_worker_times_out_and_the_next_request_restarts_it(client):
    reply = client.request(  # minutes of work: the worker looks hung to a 2 s timeout
        "generate", timeout=2, prompt="a photo", width=64, height=64, steps=500,
        batch_count=50, batch_size=8, outdir=str(Path(client.log_path).parent),
    )  # fmt: skip
    assert not reply["ok"] and "did not answer 'generate' within 2 s" in reply["error"]
    assert not client.is_alive()
    reply = client.request("ping")
    assert reply["ok"] and DEMO in reply["model"] and reply["notices"]


def test_a_worker_that_dies_at_start_shows_its_log(tmp_path):
    crash = "import sys; sys.stderr.write('cannot import torch: boom\\n'); sys.exit(3)"
    client = GenerationClient([sys.executable, "-c", crash], log_path=tmp_path / "w.log")
    reply = client.request("ping")
    assert not reply["ok"] and "exit code 3" in reply["error"]
    assert "cannot import torch: boom" in reply["hint"]
    markdown = generate_view.reply_markdown(reply)
    assert "**Error:**" in markdown and "boom" in markdown


def test_a_worker_that_cannot_start_is_a_message(tmp_path):
    client = GenerationClient([str(tmp_path / "no-python")], log_path=tmp_path / "w.log")
    reply = client.request("ping")
    assert not reply["ok"] and "cannot start the generation worker" in reply["error"]


def test_a_silent_worker_times_out(tmp_path):
    hang = "import time; time.sleep(60)"
    client = GenerationClient([sys.executable, "-c", hang], log_path=tmp_path / "w.log")
    client.startup_s = 0
    started = time.monotonic()
    reply = client.request("ping", timeout=1)
    assert not reply["ok"] and "did not answer" in reply["error"]
    assert time.monotonic() - started < 15 and not client.is_alive()


# ---- the tab's functions --------------------------------------------------------------------


def test_defaults_come_from_the_newest_run(run_folder, tmp_path):
    defaults = generate_view.run_defaults(run_folder.parent, "fallback")
    assert defaults.model == DEMO and defaults.clip_skip == 2
    assert defaults.embedding == str(run_folder / "gridtoy.safetensors")
    assert generate_view.run_defaults(tmp_path / "none", "fallback").model == "fallback"


def test_the_last_checkpoint_stands_in_for_a_missing_final_file(tmp_path):
    step = kohya_file(tmp_path / "toy-step00000010.safetensors")
    events = [
        {"type": "checkpoint", "step": 10, "path": str(step)},
        {"type": "done", "reason": "stopped", "path": str(tmp_path / "gone.safetensors")},
    ]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    assert generate_view.final_embedding(tmp_path) == str(step)


def test_bad_embeddings_say_why_and_the_others_keep_working(client, tmp_path, run_folder):
    state, text = generate_view.add_embedding(client, str(tmp_path / "missing.safetensors"))
    assert not state and "no such file" in text
    good = str(run_folder / "gridtoy.safetensors")
    state, text = generate_view.add_embedding(client, good)
    assert [e["trigger"] for e in state["embeddings"]] == ["gridtoy"], text

    wide = kohya_file(tmp_path / "sdxl_width.safetensors", width=768)
    state, text = generate_view.add_embedding(client, str(wide), "widetoy")
    assert not state and "**Error:**" in text and "768" in text and "Traceback" not in text
    state, text = generate_view.add_embedding(client, good)  # the same trigger again
    assert not state and "already used" in text
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down.lora_down.weight": np.zeros((4, 4), np.float32)}, str(lora))
    state, text = generate_view.add_embedding(client, str(lora), "loratoy")
    assert not state and "**Error:**" in text

    assert [e["trigger"] for e in client.embeddings] == ["gridtoy"]
    items, text = generate_view.generate(
        client, tmp_path / "out", prompt="a photo of gridtoy", width=64, height=64, steps=2,
        seed=7, batch_count=1, batch_size=2, sampler="euler_a", scale=5.0,
    )  # fmt: skip
    assert len(items) == 2, text
    path, caption = items[1]
    assert Path(path).is_file() and Path(path).parent == tmp_path / "out"
    assert caption.startswith("seed 8 · 2 steps · CFG 5.0 · euler_a · 64x64") and path in caption
    assert len(generate_view.gallery_images(items)) == 2
    assert generate_view.remove_embedding(client, "gridtoy")[0]["embeddings"] == []


def test_what_the_widgets_hold_is_what_the_worker_takes(client, tmp_path):
    widgets = {name: info.default for name, info in OPTIONS.items()}  # each widget's start
    widgets |= {"prompt": "a red toy", "seed": None, "width": 64.0, "height": 64.0}
    options = generate_view.generate_options({**widgets, "steps": 1.0, "batch_count": ""})
    assert (options["seed"], options["steps"], options["batch_count"]) == (-1, 1, 1)
    assert isinstance(options["width"], int) and isinstance(options["scale"], float)
    items, text = generate_view.generate(client, tmp_path, **options)
    assert len(items) == 1 and "64x64" in items[0][1], text
    _, text = generate_view.generate(client, tmp_path, **{**options, "steps": 1.5})
    assert "steps = 1.5: expected a whole number" in text


def test_the_tab_has_a_widget_per_generation_option_bound_by_name():
    import gradio as gr

    from ti_gui.fields import Form
    from ti_gui.tabs import generate_tab

    with gr.Blocks():
        tab = generate_tab.build(Form())
    assert list(tab.options.widgets) == [
        "prompt", "negative_prompt", "width", "height", "steps", "scale", "seed",
        "batch_count", "batch_size", "sampler", "clip_skip", "max_token_length",
    ]  # fmt: skip
    assert set(tab.options.widgets) == set(OPTIONS)
    steps, sampler = tab.options["steps"], tab.options["sampler"]
    assert (steps.elem_id, steps.minimum, steps.maximum) == ("generate-steps", 1, 500)
    assert [value for _, value in sampler.choices] == list(OPTIONS["sampler"].choices)
    assert tab.options["prompt"].elem_id == "generate-prompt"


def test_an_empty_prompt_is_a_message_not_a_request(client, tmp_path):
    items, text = generate_view.generate(client, tmp_path, prompt="  ")
    assert items == [] and "prompt is empty" in text


def test_load_model_with_the_last_runs_embedding(tmp_path, run_folder):
    client = GenerationClient(log_path=tmp_path / "w.log")
    try:
        state, text = generate_view.load_model(
            client, DEMO, first_embedding=str(run_folder / "gridtoy.safetensors")
        )
        assert state["family"] == "sd1" and "gridtoy" in text
        assert generate_view.embedding_rows(state["embeddings"])[0][:2] == ["gridtoy", 1]
        assert "family `sd1`" in generate_view.model_markdown(state)
        _, text = generate_view.load_model(client, "/nowhere/model.safetensors")
        assert "**Error:**" in text and client.request("ping")["embeddings"]  # still loaded
    finally:
        client.shutdown()


def test_the_preview_counts_each_trigger_as_its_vectors():
    embeddings = [
        {"trigger": "toyone", "num_vectors": 3, "tokens": ["toyone", "toyone1", "toyone2"]},
        {"trigger": "toytwo", "num_vectors": 1, "tokens": ["toytwo"]},
    ]
    one = generate_view.render_prompt_preview("a photo of toyone", embeddings, 75)
    assert "3 new placeholder token(s)" in one  # the Token tab's own preview
    both = generate_view.render_prompt_preview("toyone and toytwo", embeddings, 75)
    assert "4 embedding token(s)" in both and "5 / 75 tokens used" in both
    assert "Type a prompt" in generate_view.render_prompt_preview("", embeddings, 75)


# ---- grid, inspector, conversion ------------------------------------------------------------


def test_the_checkpoint_grid_of_a_run(client, run_folder, tmp_path):
    choices, ticked, run, text = embedding_tools_tab.list_checkpoints(client, str(run_folder))
    assert [label for label, _ in choices][:2] == ["step 10", "step 20"], text
    assert ticked == [path for _, path in choices] and run["trigger"] == "gridtoy"
    assert embedding_tools_tab.default_prompt(run["trigger"]) == "a photo of gridtoy"

    path, text = embedding_tools_tab.make_grid(
        client, ticked, "1, 2", "a photo of gridtoy", run, tmp_path, width=64, height=64,
        steps=2,
    )  # fmt: skip
    assert path, text
    with Image.open(path) as grid:
        assert grid.width > 2 * 64 and grid.height > len(ticked) * 64
    assert "seed 1" in text and "step 10" in text

    assert (
        "not a whole number"
        in embedding_tools_tab.make_grid(client, ticked, "1, x", "p", run, tmp_path)[1]
    )
    assert "no checkpoints" in embedding_tools_tab.make_grid(client, [], "1", "p", run, tmp_path)[1]


def test_inspect_and_convert(client, run_folder, tmp_path):
    text = embedding_tools_tab.inspect(client, str(run_folder / "gridtoy.safetensors"))
    assert "trigger word **gridtoy**" in text and "1 x 32" in text
    assert "median norm" in text and "cosine" in text  # compared with the loaded model
    source = tmp_path / "toy.safetensors"
    source.write_bytes((run_folder / "gridtoy.safetensors").read_bytes())
    written = embedding_tools_tab.convert(client, str(source), "a1111")
    assert written.startswith("Wrote") and "a1111" in written
    assert "no such file" in embedding_tools_tab.inspect(client, str(tmp_path / "none.pt"))
