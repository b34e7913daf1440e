"""sd-scripts' saving, metadata and logging options on demo runs: TensorBoard event files with the
loss of every step, model-spec metadata in the file and in `inspect`, output_config, numbered
state folders pruned as sd-scripts prunes them, and the console log in a file."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from safetensors import safe_open

from ti_core.cli.main import main
from ti_core.config.run_config import SavingConfig
from ti_core.config.toml_io import load_config
from ti_core.training.outputs import epochs_between_copies


def demo_args(run_dir: Path, steps: int = 3) -> list[str]:
    return ["train", "--pretrained_model_name_or_path", "demo:sd1",
            "--train_data_dir", "demo:sd1", "--caption_extension", ".txt",
            "--resolution", "64", "--token_string", "demotoy", "--init_word", "toy",
            "--learning_rate", "0.05", "--max_train_steps", str(steps),
            "--output_dir", str(run_dir)]  # fmt: skip


def test_tensorboard_logs_the_loss_of_every_step_and_the_file_carries_the_model_spec(
    tmp_path, capsys
):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, logs = tmp_path / "run", tmp_path / "logs"
    args = [*demo_args(run_dir), "--log_with", "tensorboard", "--logging_dir", str(logs),
            "--log_prefix", "demo-", "--log_config", "--metadata_author", "Ann Example",
            "--metadata_license", "CC-BY-4.0", "--metadata_tags", "toy,demo"]  # fmt: skip
    assert main(args) == 0
    (run_logs,) = logs.glob("demo-*/textual_inversion")  # <prefix><start time>/<tracker name>
    events = EventAccumulator(str(run_logs))
    events.Reload()
    assert [event.step for event in events.Scalars("loss")] == [1, 2, 3]
    assert [round(event.value, 6) for event in events.Scalars("lr")] == [0.05] * 3

    path = run_dir / "demotoy.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata()
    assert header["modelspec.title"] == "demotoy" == header["modelspec.trigger_phrase"]
    assert header["modelspec.architecture"] == "stable-diffusion-v1/textual-inversion"
    assert header["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    assert header["modelspec.resolution"] == "64x64"  # the run's --resolution
    assert (header["modelspec.author"], header["modelspec.license"]) == ("Ann Example", "CC-BY-4.0")
    assert header["modelspec.tags"] == "toy,demo" and "modelspec.description" not in header

    capsys.readouterr()
    assert main(["inspect", str(path)]) == 0
    shown = capsys.readouterr().out
    assert "model spec:" in shown and "author: Ann Example" in shown
    assert "architecture: stable-diffusion-v1/textual-inversion" in shown


def test_output_config_writes_the_config_and_trains_nothing(tmp_path, capsys):
    run_dir, written = tmp_path / "run", tmp_path / "saved"
    args = [*demo_args(run_dir), "--output_config", "--config_file", str(written),
            "--save_every_n_steps", "2", "--wandb_api_key", "secret-key"]  # fmt: skip
    assert main(args) == 0
    path = tmp_path / "saved.toml"  # ".toml" added, as sd-scripts does
    config = load_config(path)
    assert config.token.token_string == "demotoy" and config.saving.save_every_n_steps == 2
    assert not config.saving.output_config and "secret-key" not in path.read_text()
    assert not run_dir.exists()  # nothing was trained
    assert main(args) == 2  # the file exists now: never overwritten
    assert "exists already" in capsys.readouterr().err


def test_state_folders_are_numbered_and_pruned_as_sd_scripts_does(tmp_path):
    run_dir, console = tmp_path / "run", tmp_path / "logs" / "console.log"
    args = [*demo_args(run_dir, steps=6), "--save_every_n_steps", "2", "--save_state",
            "--save_last_n_steps_state", "2", "--console_log_file", str(console)]  # fmt: skip
    assert main(args) == 0
    # states at steps 2, 4, 6; at step 6 those of the last 2 steps stay (4 included, as in
    # sd-scripts); the embedding copies are all kept (save_last_n_steps is 0)
    assert sorted(p.name for p in run_dir.glob("demotoy-step*-state")) == [
        "demotoy-step00000004-state",
        "demotoy-step00000006-state",
    ]
    assert len(list(run_dir.glob("demotoy-step*.safetensors"))) == 3
    assert (run_dir / "demotoy-state" / "state.pt").is_file()  # at the end, sd-scripts' name
    assert (run_dir / "state" / "state.pt").is_file()  # what --resume and the GUI read
    assert "loaded Stable Diffusion 1.x" in console.read_text()  # the console went to the file
    resumed = tmp_path / "resumed"
    more = [*demo_args(resumed, steps=7), "--resume", str(run_dir / "demotoy-step00000006-state")]
    assert main(more) == 0


def test_save_state_on_train_end_saves_only_the_final_state(tmp_path):
    run_dir = tmp_path / "run"
    args = [*demo_args(run_dir, steps=2), "--save_every_n_steps", "1",
            "--save_state_on_train_end"]  # fmt: skip
    assert main(args) == 0
    assert (run_dir / "demotoy-state" / "state.pt").is_file()
    assert not list(run_dir.glob("demotoy-step*-state"))


def test_logging_mistakes_stop_before_the_model_loads(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main([*demo_args(run_dir), "--log_with", "tensorboard"]) == 2
    assert "needs logging_dir" in capsys.readouterr().err
    if importlib.util.find_spec("wandb") is None:
        assert main([*demo_args(run_dir), "--log_with", "wandb"]) == 2
        assert "wandb package is not installed" in capsys.readouterr().err
    assert not (run_dir / "events.jsonl").exists()


@pytest.mark.parametrize(
    ("ratio", "every_n", "epochs", "expected"), [(0, 2, 10, 2), (3, 0, 10, 3), (20, 0, 10, 1)]
)
def test_save_n_epoch_ratio_sets_the_epochs_between_copies(ratio, every_n, epochs, expected):
    saving = SavingConfig(save_n_epoch_ratio=ratio, save_every_n_epochs=every_n)
    assert epochs_between_copies(saving, epochs) == expected
