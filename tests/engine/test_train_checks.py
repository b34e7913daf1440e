"""`train` checks config, token and data before model work; --debug_dataset shows the ids."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ROOT
from safetensors.torch import save_file

from ti_core.cli.main import main

DEMO = str(ROOT / "presets" / "demo.toml")


@pytest.fixture()
def run_dir(tmp_path, demo_cache):
    return tmp_path / "run"


def test_debug_dataset_shows_new_ids_in_place_of_the_token(run_dir, capsys):
    code = main(["train", "--config", DEMO, "--output_dir", str(run_dir),
                 "--token_string", "mychar4", "--init_word", "cute",
                 "--num_vectors_per_token", "4", "--debug_dataset"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "caption: a " in out and "mychar4 mychar41 mychar42 mychar43" in out
    assert "input ids: tensor([[49406," in out
    assert "49408, 49409, 49410, 49411" in out
    assert not run_dir.exists()  # a debug run writes nothing


def test_check_dataset_reports_steps_and_buckets_as_json(run_dir, capsys):
    code = main(["check-dataset", "--config", DEMO, "--json", "--no-use_object_template"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["ok"]
    assert report["steps_per_epoch"] == 240  # 24 images x 10 repeats, batch 1
    assert report["datasets"][0]["buckets"] == {"64x64": 240}


def test_captions_without_the_token_stop_the_run_before_the_model_loads(run_dir, capsys):
    code = main(["train", "--config", DEMO, "--output_dir", str(run_dir),
                 "--no-use_object_template", "--token_string", "mychar4"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert 'no caption contains the token "mychar4"' in err and "add_missing_token" in err
    assert "loaded" not in err and not run_dir.exists()


def test_add_missing_token_puts_the_token_in_front(run_dir, capsys):
    code = main(["train", "--config", DEMO, "--output_dir", str(run_dir),
                 "--no-use_object_template", "--token_string", "mychar4",
                 "--add_missing_token", "--debug_dataset"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    captions = [line for line in out.splitlines() if line.startswith("caption: ")]
    assert captions and all(line.startswith("caption: mychar4, ") for line in captions)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--token_string", "cat"], "already a token the tokenizer knows"),
        (["--token_string", "mychar4", "--init_word", "   "], "gives no tokens"),
        (
            ["--init_word", "a very long description", "--num_vectors_per_token", "2"],
            "more than the 2 vectors",
        ),  # fmt: skip
        (["--train_data_dir", "/no/such/folder"], "folder not found"),
        (["--dataset_config", "/no/such.toml", "--train_data_dir", ""], "no/such.toml"),
    ],
)
def test_bad_input_is_one_message_before_model_work(run_dir, capsys, flags, expected):
    code = main(["train", "--config", DEMO, "--output_dir", str(run_dir), *flags])
    err = capsys.readouterr().err
    assert code == 2 and expected in err
    assert "Traceback" not in err and "loaded" not in err
    assert not run_dir.exists()


def test_weights_that_are_a_lora_are_refused_before_model_work(run_dir, tmp_path, capsys):
    lora = tmp_path / "style_lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0.lora_down.weight": torch.zeros(4, 8)}, lora)
    code = main(["train", "--config", DEMO, "--output_dir", str(run_dir),
                 "--weights", str(lora)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "LoRA" in err and "loaded" not in err


def test_dataset_toml_typo_names_the_key(run_dir, tmp_path, capsys):
    toml = tmp_path / "dataset.toml"
    toml.write_text('[[datasets]]\nresolution = 64\n[[datasets.subsets]]\nimage_dri = "x"\n')
    code = main(["train", "--config", DEMO, "--output_dir", str(run_dir),
                 "--train_data_dir", "", "--dataset_config", str(toml)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "image_dri" in err and "image_dir" in err
