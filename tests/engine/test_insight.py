"""Knowing when the embedding is good: the validation loss is deterministic, the vector health
figures are what a hand computation gives, the hints fire on a rate that is too low or too high,
a NaN rolls back instead of ending the run, a bad save is caught, and Keep this step works."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ti_core.cli.main import main
from ti_core.config.run_config import Config
from ti_core.data.run_data import dataset_specs
from ti_core.embeddings.specs import embedding_specs
from ti_core.embeddings.tokens import add_embeddings, text_parts
from ti_core.models.loading import load_model
from ti_core.run_folder.keep import REPLACED, keep_step
from ti_core.run_folder.reader import read_events, read_run_folder
from ti_core.run_folder.writer import RunFolder
from ti_core.training.diffusion import training_scheduler
from ti_core.training.health import Vocabulary, Watch, vector_health
from ti_core.training.outputs import Outputs, _mismatch
from ti_core.training.setup import build_batches, choose_precision, prepare_model
from ti_core.training.validation import validation_loss

DEMO = [
    "--pretrained_model_name_or_path=demo:sd1", "--train_data_dir=demo:sd1",
    "--caption_extension=.txt", "--resolution=64", "--token_string=demotoy", "--init_word=toy",
    "--train_batch_size=4",
]  # fmt: skip


def _model(config: Config):
    loaded = load_model("demo:sd1")
    tokenizers, encoders = text_parts(loaded.pipeline)
    embeddings = embedding_specs(config)
    placeholders = add_embeddings(tokenizers, encoders, embeddings)
    precision = choose_precision("no", torch.device("cpu"))
    model = prepare_model(loaded, embeddings, placeholders, tokenizers, encoders, config, precision)
    return model, precision


def _demo_config() -> Config:
    config = Config()
    config.dataset.train_data_dir, config.dataset.caption_extension = "demo:sd1", ".txt"
    config.dataset.resolution = "64"
    config.token.token_string, config.token.init_word = "demotoy", "toy"
    return config


def test_the_validation_loss_is_the_same_for_the_same_vectors_and_moves_with_them():
    config = _demo_config()
    model, precision = _model(config)
    _, vset = build_batches(config, dataset_specs(config), model, precision)
    assert vset is not None and vset.images == 8 and vset.timesteps == [125, 375, 625, 875]
    scheduler = training_scheduler(model.loaded.pipeline.scheduler, False)
    first = validation_loss(config, model, vset, precision, scheduler)
    assert validation_loss(config, model, vset, precision, scheduler) == first
    with torch.no_grad():
        model.parameters[0] += 0.5
    assert validation_loss(config, model, vset, precision, scheduler) != first


def test_a_validation_split_holds_images_out_of_training():
    config = _demo_config()
    config.dataset.validation_split = 0.25
    model, precision = _model(config)
    batches, vset = build_batches(config, dataset_specs(config), model, precision)
    trained = {path for batch in batches for path in batch["paths"]}
    held = {path for batch in vset.batches for path in batch["paths"]}
    assert vset.held_out == 6 and len(held) == 6 and not trained & held
    assert len(trained) == 18


def test_vector_health_matches_a_hand_computation():
    config = _demo_config()
    model, _ = _model(config)
    vocabulary = Vocabulary.of(model)
    start = [tokens.vectors.detach().clone() for tokens in model.tokens]
    with torch.no_grad():
        model.parameters[0][0, :4] += 0.3
    health = vector_health(model, vocabulary, start)
    (figures,) = health["encoders"]["text_encoder"]
    vector, table = model.parameters[0][0].detach(), model.tokens[0].table.weight.detach()
    assert figures["norm"] == pytest.approx(float(vector.norm()), abs=1e-5)
    expected_drift = 1 - float(F.cosine_similarity(vector, start[0][0], dim=0))
    assert figures["drift"] == pytest.approx(expected_drift, abs=1e-6) and figures["drift"] > 0
    nearest = F.cosine_similarity(table, vector[None], dim=1).topk(3).indices.tolist()
    assert figures["nearest"] == model.tokenizers[0].convert_ids_to_tokens(nearest)
    median = float(table.norm(dim=1).median())
    assert health["vocab_median_norm"]["text_encoder"] == pytest.approx(median, abs=1e-5)


def test_overfitting_is_said_once_after_three_rises_and_the_suggestion_skips_runaway_steps():
    watch = Watch("AdamW", 5e-3)
    for step, loss in ((10, 1.0), (20, 0.8), (30, 0.85), (40, 0.9)):
        assert not watch.validation(step, loss)
    (hint,) = watch.validation(50, 0.95)
    assert hint.kind == "overfitting" and "since step 20" in hint.message
    assert not watch.validation(60, 0.99)  # said once
    watch.saved = {10: "a", 20: "b", 30: "c"}
    watch.runaway_steps = {20}
    assert watch.suggestion()[:2] == (30, "c")  # 20 has the lowest loss, but its norm ran away
    assert watch.suggestion() is None  # unchanged: not said again


def _run(tmp_path: Path, *flags: str) -> list[dict]:
    run_dir = tmp_path / "run"
    assert main(["train", *DEMO, f"--output_dir={run_dir}", *flags]) == 0
    return read_events(run_dir / "events.jsonl")


def test_a_learning_rate_too_low_gets_the_not_moving_hint(tmp_path):
    events = _run(tmp_path, "--learning_rate=1e-9", "--max_train_steps=50",
                  "--validate_every_n_steps=50")  # fmt: skip
    kinds = [event["kind"] for event in events if event["type"] == "hint"]
    assert kinds == ["not_moving"]
    assert [e["step"] for e in events if e["type"] == "validation"] == [0, 50]


def test_a_huge_learning_rate_gets_the_norm_runaway_hint(tmp_path):
    events = _run(tmp_path, "--learning_rate=0.5", "--max_train_steps=10",
                  "--validate_every_n_steps=5")  # fmt: skip
    hints = [event for event in events if event["type"] == "hint"]
    assert "norm_runaway" in [hint["kind"] for hint in hints]
    vectors = [e for e in events if e["type"] == "vectors"]
    last = vectors[-1]["encoders"]["text_encoder"][0]["norm"]
    assert last > 4 * vectors[-1]["vocab_median_norm"]["text_encoder"]


def test_a_nan_loss_rolls_back_halves_the_rate_and_the_run_finishes(tmp_path, monkeypatch):
    import ti_core.training.loop as loop

    real, calls = loop.step_loss, []

    def nan_once(*args, **kwargs):
        loss = real(*args, **kwargs)
        calls.append(1)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(loop, "step_loss", nan_once)
    events = _run(tmp_path, "--max_train_steps=6", "--validate_every_n_epochs=0")
    done = [event for event in events if event["type"] == "done"]
    assert done[-1]["reason"] == "finished"
    warnings = [e["message"] for e in events if e["type"] == "warning"]
    assert any("half the learning rate (1 of 3 roll-backs)" in message for message in warnings)
    rates = [e["lr"] for e in events if e["type"] == "step"]
    assert rates[-1] == pytest.approx(rates[0] / 2)


def test_a_saved_file_missing_an_encoder_is_caught_and_the_previous_file_stays(
    tmp_path, monkeypatch
):
    import ti_core.embeddings.writers as writers

    config = _demo_config()
    model, _ = _model(config)
    with RunFolder(tmp_path / "run") as run:
        outputs = Outputs(config, run, model, optimizer=None, lr_schedule=None, scaler=None)
        (good,) = outputs.save_embedding(step=1)
        before = good.read_bytes()
        sdxl_like = [model.vectors(0)[0], torch.zeros(1, 64)]
        assert "holds 1 text encoder(s)' vectors, the model has 2" in _mismatch(
            good, sdxl_like, "float"
        )
        real = writers.save_embedding

        def drops_clip_g(path, vectors, **kwargs):  # a writer bug: one encoder left out
            return real(path, vectors[:1], **kwargs)

        monkeypatch.setattr(writers, "save_embedding", drops_clip_g)
        model.vectors = lambda index: sdxl_like  # the model's two encoders' vectors
        assert outputs.save_embedding(step=2) == []
    assert good.read_bytes() == before
    errors = [e for e in read_events(tmp_path / "run" / "events.jsonl") if e["type"] == "error"]
    assert "not saved" in errors[0]["message"] and "previous file is kept" in errors[0]["hint"]
    assert not (tmp_path / "run" / ".saving").exists()


def test_keep_this_step_replaces_the_final_file_and_keeps_the_old_one(tmp_path):
    events = _run(tmp_path, "--max_train_steps=10", "--save_every_n_steps=5",
                  "--validate_every_n_steps=5")  # fmt: skip
    run_dir = tmp_path / "run"
    suggestion = read_run_folder(run_dir).latest.suggestion
    assert suggestion is not None and Path(suggestion["path"]).is_file()
    assert [e for e in events if e["type"] == "suggestion"]
    step_five = run_dir / "demotoy-step00000005.safetensors"
    final, old_final = run_dir / "demotoy.safetensors", final_bytes(run_dir)
    assert keep_step(run_dir, step_five) == final
    assert final.read_bytes() == step_five.read_bytes()
    assert (run_dir / f"demotoy{REPLACED}.safetensors").read_bytes() == old_final
    json.dumps(suggestion)  # plain JSON for the GUI


def final_bytes(run_dir: Path) -> bytes:
    return (run_dir / "demotoy.safetensors").read_bytes()
