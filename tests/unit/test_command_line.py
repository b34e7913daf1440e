"""A pasted sd-scripts command line or TOML becomes the run config: the TI guide's own example,
quotes, continuations, --config_file, accelerate's flags skipped, unknown names refused by name."""

from __future__ import annotations

import pytest

from ti_core.config.command_line import config_from_paste, split_command
from ti_core.config.run_config import Config, ConfigError
from ti_core.config.toml_io import config_to_command, config_to_toml

# sd-scripts' docs/train_ti_README-en.md example, verbatim (trailing spaces and placeholders
# included, no continuation characters: the lines are simply broken).
GUIDE_COMMAND = """accelerate launch --num_cpu_threads_per_process 1 train_textual_inversion.py 
    --dataset_config=<.toml file created during data preparation> 
    --output_dir=<output folder for the trained model>  
    --output_name=<file name for the trained model output without extension> 
    --save_model_as=safetensors 
    --prior_loss_weight=1.0 
    --max_train_steps=1600 
    --learning_rate=1e-6 
    --optimizer_type="AdamW8bit" 
    --xformers 
    --mixed_precision="fp16" 
    --cache_latents 
    --gradient_checkpointing
    --token_string=mychar4 --init_word=cute --num_vectors_per_token=4
"""  # noqa: W291


def test_the_ti_guides_command_fills_its_values_and_names_its_placeholders():
    pasted = config_from_paste(GUIDE_COMMAND)
    config = pasted.config
    assert (config.token.token_string, config.token.init_word) == ("mychar4", "cute")
    assert config.token.num_vectors_per_token == 4
    assert config.optimizer.learning_rate == 1e-6
    assert config.optimizer.optimizer_type == "AdamW8bit"
    assert config.training.mixed_precision == "fp16" and config.training.xformers
    assert config.training.gradient_checkpointing and config.dataset.cache_latents
    assert config.training.max_train_steps == 1600
    assert "train_textual_inversion.py" in pasted.kind
    # the <...> placeholders are left for the user, each named, and keep the defaults
    for name in ("dataset_config", "output_dir", "output_name"):
        assert any(note.startswith(f"--{name} is the placeholder <") for note in pasted.notes)
    assert (
        config.dataset.dataset_config == ""
        and config.saving.output_dir == Config().saving.output_dir
    )


def test_continuations_and_quotes_as_a_shell_reads_them():
    bash = (
        "accelerate launch train_textual_inversion.py \\\n"
        '  --output_name "my char" \\\n'
        "  --train_data_dir='/data/my images' \\\n"
        '  --optimizer_args "weight_decay=0.1" "betas=0.9,0.99" \\\n'
        "  --token_string mychar4\n"
    )
    config = config_from_paste(bash).config
    assert config.saving.output_name == "my char"
    assert config.dataset.train_data_dir == "/data/my images"
    assert config.optimizer.optimizer_args == ["weight_decay=0.1", "betas=0.9,0.99"]
    assert config.token.token_string == "mychar4"
    # cmd.exe's ^ continuation; Windows paths keep their backslashes
    windows = (
        'accelerate launch "train_textual_inversion.py" ^\n'
        '  --pretrained_model_name_or_path="C:\\models\\v1-5.safetensors" ^\n'
        "  --max_train_steps 300\n"
    )
    config = config_from_paste(windows).config
    assert config.model.pretrained_model_name_or_path == "C:\\models\\v1-5.safetensors"
    assert config.training.max_train_steps == 300


def test_config_file_is_read_first_and_the_flags_win(tmp_path):
    (tmp_path / "ti.toml").write_text(
        'pretrained_model_name_or_path = "demo:sd1"\nmax_train_steps = 900\n'
        '[extra]\ntoken_string = "fromfile"\n',
        encoding="utf-8",
    )
    # sd-scripts adds ".toml" when the name lacks it; a relative path is read from `cwd`
    pasted = config_from_paste(
        "accelerate launch train_textual_inversion.py --config_file ti --max_train_steps 50",
        cwd=tmp_path,
    )
    config = pasted.config
    assert config.model.pretrained_model_name_or_path == "demo:sd1"
    assert config.token.token_string == "fromfile"
    assert config.training.max_train_steps == 50
    with pytest.raises(
        ConfigError, match=r"--config_file missing\.toml: .*missing\.toml not found"
    ):
        config_from_paste("train_textual_inversion.py --config_file missing.toml", cwd=tmp_path)


def test_unknown_options_are_all_named_with_the_near_miss():
    with pytest.raises(ConfigError) as caught:
        config_from_paste(
            "accelerate launch train_textual_inversion.py --learning_rat 1e-4 "
            "--token_string mychar4 --network_module networks.lora stray"
        )
    message = str(caught.value)
    assert "--learning_rat (did you mean --learning_rate?)" in message
    assert "--network_module" in message
    assert "'stray'" in message and "'networks.lora'" not in message  # that one is a value


def test_accelerates_own_flags_are_skipped_silently():
    pasted = config_from_paste(
        "accelerate launch --num_cpu_threads_per_process 8 --mixed_precision bf16 "
        "--num_processes 2 --multi_gpu sdxl_train_textual_inversion.py --token_string mychar4"
    )
    # accelerate's --mixed_precision is not the script's: the script's default stays
    assert pasted.config.training.mixed_precision == "no"
    assert pasted.options == ["token_string"] and pasted.notes == []
    with pytest.raises(ConfigError, match="names no training script"):
        config_from_paste("accelerate launch --num_processes 2 --token_string mychar4")


def test_bad_values_and_quotes_are_user_errors():
    with pytest.raises(ConfigError, match="--max_train_steps abc: expected a whole number"):
        config_from_paste("train_textual_inversion.py --max_train_steps abc")
    with pytest.raises(ConfigError, match="closing one"):
        config_from_paste('train_textual_inversion.py --output_name "unclosed')
    with pytest.raises(ConfigError, match="Nothing pasted"):
        config_from_paste("  \n")


def test_our_own_command_line_reads_back_to_the_same_config():
    config = Config()
    config.model.pretrained_model_name_or_path = "/models/my model.safetensors"
    config.token.token_string, config.token.init_word = "mychar4", "person"
    config.optimizer.optimizer_args = ["weight_decay=0.1"]
    config.dataset.enable_bucket = True
    config.optimizer.learning_rate = 0.002
    assert config_from_paste(config_to_command(config)).config == config
    assert split_command(config_to_command(config))[:4] == ["python", "-m", "ti_core", "train"]


def test_pasted_tomls_ours_and_sd_scripts_flat_one():
    config = Config()
    config.token.token_string = "mychar4"
    pasted = config_from_paste(config_to_toml(config))
    assert pasted.config == config and pasted.kind == "TOML"
    flat = config_from_paste(
        'token_string = "mychar4"\nlearning_rate = 1e-4\n[any]\nxformers = true'
    )
    assert flat.kind == "sd-scripts TOML" and flat.config.training.xformers
    assert flat.config.optimizer.learning_rate == 1e-4
    with pytest.raises(ConfigError) as caught:
        config_from_paste('token_strin = "x"\nlearning_rat = 1.0\n')
    message = str(caught.value)
    assert "token_strin (did you mean token_string?)" in message
    assert "learning_rat (did you mean learning_rate?)" in message
    with pytest.raises(ConfigError, match="neither a command line .* nor valid TOML"):
        config_from_paste("token_string mychar4")
