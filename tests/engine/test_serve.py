"""The generation worker as the GUI uses it: a subprocess speaking JSON lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from ti_core.embeddings.writers import save_embedding
from ti_core.models.demo import demo_dir

ROOT = Path(__file__).resolve().parents[2]


def test_worker_answers_every_line_and_survives_bad_requests(tmp_path):
    config = json.loads((demo_dir("sd1") / "model/text_encoder/config.json").read_text())
    vectors = [torch.randn(2, config["hidden_size"])]
    (embedding,) = save_embedding(tmp_path / "servetoy", vectors, token_string="servetoy")
    outdir = tmp_path / "images"
    requests = [
        {"id": 1, "op": "ping"},
        {"id": 2, "op": "generate", "prompt": "a toy", "outdir": str(outdir)},
        {"id": 3, "op": "load_model", "model": "demo:sd1", "device": "cpu"},
        {"id": 4, "op": "load_embeddings", "paths": [str(embedding)]},
        {"id": 5, "op": "generate", "prompt": "a photo of servetoy", "outdir": str(outdir),
         "width": 64, "height": 64, "steps": 2, "seed": 7, "batch_size": 2},
        "this is not json",
        {"id": 6, "op": "load_embeddings", "paths": [str(tmp_path / "missing.pt")]},
        {"id": 7, "op": "dance"},
        {"id": 8, "op": "inspect", "path": str(embedding)},
        {"id": 9, "op": "remove_embedding", "trigger": "servetoy"},
        {"id": 10, "op": "ping"},
        {"id": 20, "op": "generate", "prompt": "a toy", "outdir": str(outdir), "stpes": 2},
        {"id": 21, "op": "generate", "prompt": "a toy", "outdir": str(outdir), "steps": "2"},
        {"id": 22, "op": "generate", "prompt": "a toy", "outdir": str(outdir), "seed": None,
         "width": 64, "height": 64, "steps": 1, "sampler": "k_euler"},
        {"id": 11, "op": "quit"},
        {"id": 12, "op": "ping"},  # after quit: never answered
    ]  # fmt: skip
    lines = [r if isinstance(r, str) else json.dumps(r) for r in requests]
    done = subprocess.run(
        [sys.executable, "-m", "ti_core", "serve"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ},
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    replies = [json.loads(line) for line in done.stdout.splitlines()]  # stdout: replies only
    by_id = {reply["id"]: reply for reply in replies}
    assert [reply["id"] for reply in replies] == [
        1,
        2,
        3,
        4,
        5,
        None,
        6,
        7,
        8,
        9,
        10,
        20,
        21,
        22,
        11,
    ]

    assert by_id[1] == {"id": 1, "ok": True, "pong": True, "model": None, "embeddings": []}
    assert by_id[2]["ok"] is False and "no model is loaded" in by_id[2]["error"]
    assert "load_model" in by_id[2]["hint"]
    assert by_id[3]["ok"] and by_id[3]["family"] == "sd1"
    assert by_id[4]["loaded"] == ["servetoy"]
    assert by_id[4]["embeddings"][0]["tokens"] == ["servetoy", "servetoy1"]

    images = by_id[5]["images"]
    assert [image["settings"]["seed"] for image in images] == [7, 8]
    assert all(Path(image["path"]).is_file() for image in images)
    assert images[0]["settings"]["prompt"] == "a photo of servetoy"

    malformed = replies[5]
    assert malformed["ok"] is False and "not a JSON object" in malformed["error"]
    assert malformed["hint"]
    assert by_id[6]["ok"] is False and "not found" in by_id[6]["error"]
    assert by_id[7]["ok"] is False and "unknown op 'dance'" in by_id[7]["error"]

    report = by_id[8]["report"]
    assert (report["format"], report["trigger"], report["fits_model"]) == (
        "kohya",
        "servetoy",
        True,
    )
    assert len(report["encoders"][0]["nearest_tokens"]) == 2
    assert by_id[9]["embeddings"] == []
    assert by_id[10]["ok"] and by_id[10]["model"]
    assert by_id[11] == {"id": 11, "ok": True, "bye": True}

    # Generation options are checked as GenerateOptions declares them, naming the key.
    assert "unknown field(s) stpes (did you mean 'steps'?)" in by_id[20]["error"]
    assert "generate takes outdir and prompt" in by_id[20]["hint"]
    assert 'steps = "2": expected a whole number' in by_id[21]["error"]
    (image,) = by_id[22]["images"]  # a null seed (the GUI's "random") still works
    assert image["settings"]["sampler"] == "k_euler" and image["settings"]["seed"] >= 0
