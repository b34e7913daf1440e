"""Training runs on the demo models: the loss falls, the run folder tells the story, STOP and
resume behave, and the seed's sd-scripts command line runs as written."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT

from ti_core.cli.main import main
from ti_core.embeddings.files import read_embedding
from ti_core.models.demo import demo_dir
from ti_core.run_folder.writer import read_events

FAST = ["--max_train_steps", "4", "--learning_rate", "0.05"]


def demo_args(run_dir: Path, family: str = "sd1") -> list[str]:
    return ["train", "--pretrained_model_name_or_path", f"demo:{family}",
            "--train_data_dir", f"demo:{family}", "--caption_extension", ".txt",
            "--resolution", "64", "--token_string", "demotoy", "--init_word", "toy",
            "--output_dir", str(run_dir)]  # fmt: skip


def types(run_dir: Path) -> list[str]:
    return [event["type"] for event in read_events(run_dir / "events.jsonl")]


def test_training_lowers_the_loss_on_a_fixed_batch(tmp_path):
    from ti_core.config.run_config import Config
    from ti_core.data.run_data import dataset_specs
    from ti_core.embeddings.specs import embedding_specs
    from ti_core.embeddings.tokens import add_embeddings, text_parts
    from ti_core.models.loading import load_model
    from ti_core.training.diffusion import training_scheduler
    from ti_core.training.loop import step_loss
    from ti_core.training.optim import build_optimizer
    from ti_core.training.setup import build_batches, choose_precision, prepare_model

    config = Config()
    config.dataset.train_data_dir, config.dataset.caption_extension = "demo:sd1", ".txt"
    config.dataset.resolution, config.token.token_string = "64", "demotoy"
    loaded = load_model("demo:sd1")
    tokenizers, encoders = text_parts(loaded.pipeline)
    config.token.init_word = "toy"
    embeddings = embedding_specs(config)
    placeholders = add_embeddings(tokenizers, encoders, embeddings)
    precision = choose_precision("no", torch.device("cpu"))
    model = prepare_model(loaded, embeddings, placeholders, tokenizers, encoders, config, precision)
    batches, _ = build_batches(config, dataset_specs(config), model, precision)
    scheduler = training_scheduler(loaded.pipeline.scheduler, False)
    optimizer = build_optimizer(model.parameters, "AdamW", 0.05, [])
    fixed = batches[0]

    def fixed_loss() -> float:
        with torch.no_grad():
            return float(step_loss(config, model, fixed, precision, scheduler, 1234))

    before = fixed_loss()
    for _ in range(30):
        step_loss(config, model, fixed, precision, scheduler, 1234).backward()
        optimizer.step()
        optimizer.zero_grad()
    # A random tiny UNet listens to its conditioning only a little: a small but real fall.
    assert fixed_loss() < before - 0.002


def test_a_run_leaves_config_events_samples_and_pruned_copies(tmp_path):
    run_dir = tmp_path / "run"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of demotoy --w 64 --h 64 --s 2 --d 7\n")
    code = main([*demo_args(run_dir), *FAST, "--save_every_n_steps", "2",
                 "--save_last_n_steps", "1", "--sample_prompts", str(prompts),
                 "--sample_every_n_steps", "2"])  # fmt: skip
    assert code == 0
    seen = types(run_dir)
    assert seen[0] == "status" and seen[-1] == "done"
    assert seen.count("step") == 4 and "checkpoint" in seen and "sample" in seen
    done = read_events(run_dir / "events.jsonl")[-1]
    assert done["reason"] == "finished" and done["path"].endswith("demotoy.safetensors")
    # save_last_n_steps = 1: the step-2 copy was pruned when step 4 was saved
    assert sorted(p.name for p in run_dir.glob("demotoy*")) == [
        "demotoy-step00000004.safetensors",
        "demotoy.safetensors",
    ]
    assert len(list((run_dir / "samples").glob("*.png"))) == 2
    embedding = read_embedding(run_dir / "demotoy.safetensors")
    assert embedding.vectors[0].shape == (1, 32)
    assert "loaded Stable Diffusion 1.x" in (run_dir / "train.log").read_text()
    # the run folder's config.toml reproduces the run
    assert main(["print-config", "--config", str(run_dir / "config.toml")]) == 0


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_sd2_v_prediction_and_sdxl_train_and_save(tmp_path, family):
    run_dir = tmp_path / family
    assert main([*demo_args(run_dir, family), "--max_train_steps", "2"]) == 0
    embedding = read_embedding(run_dir / "demotoy.safetensors")
    widths = {"sd2": [64], "sdxl": [32, 64]}[family]
    assert [vectors.shape[1] for vectors in embedding.vectors] == widths


def test_resume_continues_bit_for_bit(tmp_path):
    whole, first, rest = tmp_path / "whole", tmp_path / "first", tmp_path / "rest"
    common = ["--learning_rate", "0.05", "--save_state"]
    assert main([*demo_args(whole), *common, "--max_train_steps", "4"]) == 0
    assert main([*demo_args(first), *common, "--max_train_steps", "2"]) == 0
    assert main([*demo_args(rest), *common, "--max_train_steps", "4",
                 "--resume", str(first / "state")]) == 0  # fmt: skip
    expected = read_embedding(whole / "demotoy.safetensors").vectors[0]
    resumed = read_embedding(rest / "demotoy.safetensors").vectors[0]
    assert torch.equal(expected, resumed)
    assert not torch.equal(expected, read_embedding(first / "demotoy.safetensors").vectors[0])


def test_non_finite_loss_stops_with_an_error_and_keeps_the_last_embedding(tmp_path):
    run_dir = tmp_path / "run"
    code = main([*demo_args(run_dir), "--max_train_steps", "20", "--learning_rate", "1e38",
                 "--max_grad_norm", "0", "--optimizer_type", "SGDNesterov"])  # fmt: skip
    events = read_events(run_dir / "events.jsonl")
    assert code == 2
    assert events[-1]["type"] == "done" and events[-1]["reason"] == "failed"
    errors = [event for event in events if event["type"] == "error"]
    assert errors and "loss became" in errors[0]["message"]
    assert torch.isfinite(read_embedding(run_dir / "demotoy.safetensors").vectors[0]).all()


def _wait_for(predicate, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_stop_flag_ends_the_run_cleanly_with_a_loadable_embedding(tmp_path, demo_cache):
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "ti_core", *demo_args(run_dir), "--max_train_steps", "100000"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "TI_TRAINER_CACHE": str(demo_cache)},
    )  # fmt: skip
    try:
        _wait_for(lambda: (run_dir / "events.jsonl").exists() and "step" in types(run_dir))
        (run_dir / "STOP").touch()
        assert process.wait(timeout=120) == 0
    finally:
        process.kill()
    done = read_events(run_dir / "events.jsonl")[-1]
    assert done["type"] == "done" and done["reason"] == "stopped"
    assert not (run_dir / "STOP").exists()
    assert read_embedding(done["path"]).vectors[0].shape == (1, 32)


def seed_command(run_dir: Path, dataset_toml: Path) -> list[str]:
    """The command line of sd-scripts' Textual Inversion guide, pointed at the demo."""
    return [
        f"--dataset_config={dataset_toml}", f"--output_dir={run_dir}", "--output_name=mychar4",
        "--save_model_as=safetensors", "--prior_loss_weight=1.0", "--max_train_steps=3",
        "--learning_rate=1e-6", '--optimizer_type=AdamW8bit', "--xformers",
        "--mixed_precision=fp16", "--cache_latents", "--gradient_checkpointing",
        "--token_string=mychar4", "--init_word=cute", "--num_vectors_per_token=4",
        "--pretrained_model_name_or_path=demo:sd1",
    ]  # fmt: skip


@pytest.fixture()
def seed_dataset(tmp_path) -> Path:
    image_dir = next((demo_dir("sd1") / "dataset").iterdir())
    toml = tmp_path / "dataset.toml"
    toml.write_text(
        "[general]\nenable_bucket = true\nmin_bucket_reso = 64\nmax_bucket_reso = 128\n"
        "caption_extension = '.none'\n"
        "[[datasets]]\nresolution = 64\nbatch_size = 2\n"
        f"[[datasets.subsets]]\nimage_dir = '{image_dir}'\nnum_repeats = 2\n"
        "class_tokens = 'mychar4 toy'\n"
    )
    return toml


def test_seed_command_line_runs_as_written(tmp_path, seed_dataset):
    run_dir = tmp_path / "run"
    assert main(["train", *seed_command(run_dir, seed_dataset)]) == 0
    warnings = [e["message"] for e in read_events(run_dir / "events.jsonl")
                if e["type"] == "warning"]  # fmt: skip
    assert sum("fp16" in message for message in warnings) == 1
    assert sum("xformers" in message for message in warnings) == 1
    assert read_embedding(run_dir / "mychar4.safetensors").vectors[0].shape == (4, 32)


def test_seed_command_line_runs_under_accelerate_launch(tmp_path, seed_dataset, demo_cache):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "accelerate.commands.launch",
               "--num_cpu_threads_per_process", "1", "-m", "ti_core", "train",
               *seed_command(run_dir, seed_dataset)]  # fmt: skip
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TI_TRAINER_CACHE": str(demo_cache)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert (run_dir / "mychar4.safetensors").is_file()


def test_convert_command_writes_each_layout_with_the_same_vectors(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main([*demo_args(run_dir), "--max_train_steps", "1"]) == 0
    trained = read_embedding(run_dir / "demotoy.safetensors").vectors[0]
    for layout, name in (("a1111", "demotoy.pt"), ("diffusers", "demotoy.safetensors")):
        out = tmp_path / layout
        out.mkdir()
        assert main(["convert", str(run_dir / "demotoy.safetensors"), "--to", layout,
                     "--out", f"{out}/"]) == 0  # fmt: skip
        converted = read_embedding(out / name)
        assert converted.format == layout and torch.equal(converted.vectors[0], trained)


@pytest.mark.parametrize(
    ("flags", "file_name", "layout"),
    [
        (["--optimizer_type", "Lion", "--learning_rate", "1e-4", "--embedding_format", "a1111"],
         "demotoy.pt", "a1111"),
        (["--optimizer_type", "SGDNesterov", "--lr_scheduler", "cosine", "--lr_warmup_steps",
          "1", "--embedding_format", "diffusers"], "demotoy.safetensors", "diffusers"),
        (["--optimizer_type", "Adafactor", "--mixed_precision", "bf16"],
         "demotoy.safetensors", "kohya"),
        (["--optimizer_type", "Prodigy", "--learning_rate", "1.0", "--save_model_as", "pt",
          "--lr_scheduler", "linear"], "demotoy.pt", "kohya"),
        (["--optimizer_type", "AdamW", "--gradient_accumulation_steps", "2",
          "--train_batch_size", "2", "--noise_offset", "0.1", "--min_snr_gamma", "5",
          "--save_precision", "fp16", "--clip_skip", "2", "--max_token_length", "150"],
         "demotoy.safetensors", "kohya"),
    ],
)  # fmt: skip
def test_optimizers_schedules_precisions_and_formats_train_on_the_demo(
    tmp_path, flags, file_name, layout
):
    run_dir = tmp_path / "run"
    assert main([*demo_args(run_dir), "--max_train_steps", "3", *flags]) == 0
    embedding = read_embedding(run_dir / file_name)
    assert embedding.format == layout and embedding.vectors[0].shape == (1, 32)
    steps = [e for e in read_events(run_dir / "events.jsonl") if e["type"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3]


def test_full_bf16_is_honoured_and_lowram_and_full_fp16_fall_back_on_the_cpu(tmp_path):
    def trained(name: str, *flags: str) -> torch.Tensor:
        assert main([*demo_args(tmp_path / name), *FAST, *flags]) == 0
        return read_embedding(tmp_path / name / "demotoy.safetensors").vectors[0]

    # The vectors stay float32 either way; a bf16 text encoder changes their gradients.
    full = trained("full", "--mixed_precision", "bf16", "--full_bf16")
    mixed = trained("mixed", "--mixed_precision", "bf16")
    assert full.dtype == mixed.dtype == torch.float32
    assert not torch.equal(full, mixed)

    trained("fp16", "--mixed_precision", "fp16", "--full_fp16", "--lowram")
    events = read_events(tmp_path / "fp16" / "events.jsonl")
    warnings = [event["message"] for event in events if event["type"] == "warning"]
    assert any("full_fp16 too" in message for message in warnings), warnings
    assert any("lowram" in message and "RAM as usual" in message for message in warnings)
