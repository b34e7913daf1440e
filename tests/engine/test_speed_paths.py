"""The fast paths of a training step keep what trains the same: noise drawn on the training
device from (seed, epoch, batch), token ids cached per caption, step events written together,
the roll-back copy kept without a read to the host, and the step profile still runs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from ti_core.cli.main import main
from ti_core.config.run_config import TrainingConfig
from ti_core.embeddings.files import read_embedding
from ti_core.embeddings.text_encoding import CaptionIds
from ti_core.embeddings.tokens import tokenize_captions
from ti_core.models.tokenizer import load_tokenizer
from ti_core.run_folder.reader import read_events
from ti_core.run_folder.writer import RunFolder
from ti_core.training.diffusion import noisy_latents, training_scheduler
from ti_core.training.noise import batch_generator, batch_seed, draw_noise

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DEMO = ["train", "--pretrained_model_name_or_path", "demo:sd1", "--train_data_dir", "demo:sd1",
        "--caption_extension", ".txt", "--resolution", "64", "--token_string", "demotoy",
        "--init_word", "toy", "--learning_rate", "0.05"]  # fmt: skip
EVERY_NOISE_OPTION = TrainingConfig(
    noise_offset=0.1, noise_offset_random_strength=True, adaptive_noise_scale=0.05,
    multires_noise_iterations=3, multires_noise_discount=0.5,
    ip_noise_gamma=0.1, ip_noise_gamma_random_strength=True, min_timestep=100, max_timestep=900,
)  # fmt: skip


def _ddpm() -> object:
    from diffusers import DDPMScheduler

    return training_scheduler(DDPMScheduler(num_train_timesteps=1000), v_parameterization=False)


@pytest.mark.parametrize("device", DEVICES)
def test_a_batch_draws_its_own_noise_on_the_training_device_the_same_every_time(device):
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5)).to(device)
    scheduler = _ddpm()

    def draw(epoch: int, batch: int) -> tuple[torch.Tensor, ...]:
        generator = batch_generator(batch_seed(7, epoch, batch), device)
        return noisy_latents(latents, scheduler, generator, EVERY_NOISE_OPTION)

    first = draw(epoch=2, batch=3)
    assert all(part.device.type == device for part in first)
    again = draw(epoch=2, batch=3)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    for other in (draw(epoch=2, batch=4), draw(epoch=3, batch=3)):
        assert not torch.equal(first[0], other[0])  # another batch: other noise
        assert not torch.equal(first[2], other[2])
    assert ((first[1] >= 100) & (first[1] < 900)).all()


def test_on_the_cpu_the_noise_is_what_a_plain_cpu_generator_draws():
    # The CPU loss sequence of earlier runs stays: same generator, same order of draws.
    latents = torch.zeros(3, 4, 8, 8)
    seed = batch_seed(0, 1, 0)
    drawn = draw_noise(latents, batch_generator(seed, "cpu"), TrainingConfig())
    plain = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(drawn, plain)


def test_cached_caption_ids_are_exactly_the_tokenized_batch():
    tokenizer = load_tokenizer()
    long = " ".join(["a very long caption of a demotoy toy"] * 14)  # past 75 tokens
    batches = [["a photo of a toy", long, "a toy"], ["a toy", "a photo of a toy", "a toy"],
               ["a new one", long, "a photo of a toy"]]  # fmt: skip
    for budget in (75, 150):
        ids = CaptionIds(tokenizer, budget, torch.device("cpu"), kept=3)
        for captions in batches:
            expected = tokenize_captions(tokenizer, captions, budget).input_ids
            assert torch.equal(ids(captions), expected)
        assert len(ids._ids) <= 3  # the oldest captions went; the answers stayed right


def test_step_events_wait_for_the_next_other_event_or_close(tmp_path):
    run = RunFolder(tmp_path)
    run.status("training")
    run.step_events_every = 3600.0  # nothing is due: every step event waits
    for step in (1, 2):
        run.step(step=step, epoch=1, loss=0.5, lr=1e-3, it_s=1.0, eta_s=1.0, total_steps=4)
    assert [e["type"] for e in read_events(tmp_path / "events.jsonl")] == ["status"]
    run.warning("something")  # any other event writes the waiting ones first, in order
    run.step(step=3, epoch=1, loss=0.5, lr=1e-3, it_s=1.0, eta_s=1.0, total_steps=4)
    events = read_events(tmp_path / "events.jsonl")
    assert [e["type"] for e in events] == ["status", "step", "step", "warning"]
    assert events[1]["time"] <= events[2]["time"] <= events[3]["time"]  # when each happened
    run.close()
    assert [e.get("step") for e in read_events(tmp_path / "events.jsonl")][-1] == 3


def test_an_update_that_leaves_a_nan_vector_rolls_back_to_the_last_finite_one(
    tmp_path, monkeypatch
):
    import ti_core.training.loop as loop

    real, calls = loop.optimizer_step, []

    def nan_after_the_third(optimizer, parameters, *args, **kwargs):
        real(optimizer, parameters, *args, **kwargs)
        calls.append(1)
        if len(calls) == 3:  # a finite loss, then an update that overflows
            with torch.no_grad():
                parameters[0].fill_(float("nan"))

    monkeypatch.setattr(loop, "optimizer_step", nan_after_the_third)
    run_dir = tmp_path / "run"
    assert main([*DEMO, "--output_dir", str(run_dir), "--max_train_steps", "5",
                 "--validate_every_n_epochs", "0"]) == 0  # fmt: skip
    events = read_events(run_dir / "events.jsonl")
    assert events[-1]["type"] == "done" and events[-1]["reason"] == "finished"
    warnings = [e["message"] for e in events if e["type"] == "warning"]
    assert sum("roll-backs)" in message for message in warnings) == 1  # one, and it helped
    assert torch.isfinite(read_embedding(run_dir / "demotoy.safetensors").vectors[0]).all()


def test_resume_with_every_noise_option_continues_bit_for_bit(tmp_path):
    noise = ["--noise_offset", "0.1", "--noise_offset_random_strength",
             "--multires_noise_iterations", "2", "--ip_noise_gamma", "0.1",
             "--save_state", "--validate_every_n_epochs", "0"]  # fmt: skip
    whole, first, rest = tmp_path / "whole", tmp_path / "first", tmp_path / "rest"
    assert main([*DEMO, *noise, "--output_dir", str(whole), "--max_train_steps", "4"]) == 0
    assert main([*DEMO, *noise, "--output_dir", str(first), "--max_train_steps", "2"]) == 0
    assert main([*DEMO, *noise, "--output_dir", str(rest), "--max_train_steps", "4",
                 "--resume", str(first / "state")]) == 0  # fmt: skip
    expected = read_embedding(whole / "demotoy.safetensors").vectors[0]
    assert torch.equal(expected, read_embedding(rest / "demotoy.safetensors").vectors[0])
    assert not torch.equal(expected, read_embedding(first / "demotoy.safetensors").vectors[0])
    steps = {folder.name: read_events(folder / "events.jsonl") for folder in (whole, first, rest)}
    losses = {
        name: [e["loss"] for e in events if e["type"] == "step"] for name, events in steps.items()
    }
    assert losses["whole"] == losses["first"] + losses["rest"]  # the same step by step


def test_the_step_profile_times_every_phase_of_the_real_loop():
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_profile.py"), "--steps", "2",
         "--warmup", "1", "--batch", "2", "--json"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout[completed.stdout.index("{") :])
    times = {row["phase"]: row["ms_per_step"] for row in report["phases"]}
    for phase in ("UNet forward", "backward", "text encoder forward", "data (the next batch)",
                  "optimizer (clip, AdamW, zero_grad)", "step event (events.jsonl)"):  # fmt: skip
        assert times[phase] > 0, phase
    assert sum(times.values()) == pytest.approx(report["step_ms"], rel=1e-6)
