"""Data-parallel training over two processes (torchrun, as `accelerate launch --multi_gpu`
starts them on GPUs; gloo on the CPU): one run folder, written once, each process on half
the batches."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from conftest import ROOT

from ti_core.embeddings.files import read_embedding
from ti_core.models.demo import demo_dir
from ti_core.run_folder.writer import read_events


def test_two_processes_train_one_run(tmp_path, demo_cache):
    run_dir = tmp_path / "run"
    demo_dir("sd1")  # built once here, not by both processes at the same time
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", "29533", "-m", "ti_core", "train",
        "--pretrained_model_name_or_path", "demo:sd1", "--train_data_dir", "demo:sd1",
        "--caption_extension", ".txt", "--resolution", "64", "--token_string", "demotoy",
        "--init_word", "toy", "--max_train_steps", "4", "--learning_rate", "0.05",
        "--save_every_n_steps", "2", "--output_dir", str(run_dir),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TI_TRAINER_CACHE": str(demo_cache)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    events = read_events(run_dir / "events.jsonl")
    assert [e["step"] for e in events if e["type"] == "step"] == [1, 2, 3, 4]  # written once
    assert [e["reason"] for e in events if e["type"] == "done"] == ["finished"]
    checkpoints = [e["path"] for e in events if e["type"] == "checkpoint"]
    assert len(checkpoints) == len(set(checkpoints)) == 3  # step 2, step 4, final
    # The demo's 240 batches (24 images x 10 repeats) are shared out: 120 per process.
    assert "240 batches" not in (run_dir / "train.log").read_text()
    assert "120 batches in each of 2 processes" in (run_dir / "train.log").read_text()
    final = read_embedding(run_dir / "demotoy.safetensors").vectors[0]
    assert not torch.equal(final, read_embedding(checkpoints[0]).vectors[0])
