"""The config is the GUI-engine contract: strict, round-trips, reads sd-scripts files."""

from __future__ import annotations

import argparse
from typing import Any

import pytest
import tomli_w

from ti_core.cli.main import main
from ti_core.config.options import FieldInfo
from ti_core.config.run_config import FIELDS, Config, ConfigError
from ti_core.config.toml_io import (
    add_config_arguments,
    apply_cli_overrides,
    config_from_toml,
    config_to_command,
    config_to_toml,
    load_config,
    save_config,
    set_option,
)
from ti_core.data.dataset_toml import ARGUMENT_NAMES, KEYS, RUN_KEYS, load_dataset_config
from ti_core.errors import DatasetError


def test_round_trip_keeps_every_value(tmp_path):
    config = Config()
    config.model.pretrained_model_name_or_path = "/models/sd15.safetensors"
    config.model.v2 = True
    config.model.vae = "/models/vae.safetensors"
    config.saving.output_dir = str(tmp_path / "run")
    path = save_config(config, tmp_path / "run.toml")
    assert load_config(path) == config
    assert config_from_toml(config_to_toml(Config())) == Config()


def test_saved_file_has_schema_version_and_sections(tmp_path):
    text = config_to_toml(Config())
    assert text.startswith("schema_version = 1")
    for section in ("model", "dataset", "token", "training", "optimizer", "saving", "sampling"):
        assert f"[{section}]" in text


def test_unknown_key_names_it_and_suggests_the_near_miss():
    with pytest.raises(ConfigError) as caught:
        config_from_toml('[model]\npretrained_model_name_or_pth = "x"', "run.toml")
    message = str(caught.value)
    assert "run.toml" in message and "pretrained_model_name_or_pth" in message
    assert "Did you mean 'pretrained_model_name_or_path'?" in message


def test_key_in_the_wrong_section_says_where_it_belongs():
    with pytest.raises(ConfigError, match=r"belongs in \[model\]"):
        config_from_toml("[saving]\nv2 = true", "run.toml")


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('[model]\nv2 = "yes"', 'v2 = "yes": expected true or false'),
        ("[saving]\noutput_dir = 5", "output_dir = 5: expected a string"),
        ("[model]\nclip_skip = 1.5", "clip_skip = 1.5: expected a whole number"),
    ],
)
def test_wrong_type_names_key_value_and_expectation(toml, expected):
    with pytest.raises(ConfigError, match=expected):
        config_from_toml(toml, "run.toml")


def test_out_of_range_and_bad_choice_are_refused():
    with pytest.raises(ConfigError, match="clip_skip = 0: expected at least 1"):
        config_from_toml("[model]\nclip_skip = 0")
    with pytest.raises(ConfigError, match="expected one of 75, 150, 225"):
        config_from_toml("[model]\nmax_token_length = 100")
    with pytest.raises(ConfigError, match='mixed_precision = "fp8": expected one of "no"'):
        config_from_toml('[training]\nmixed_precision = "fp8"')


def test_full_precision_needs_the_matching_mixed_precision():
    # sd-scripts asserts the same: full_fp16 keeps fp16 weights, so the run must compute in fp16.
    with pytest.raises(ConfigError, match='full_fp16 = true needs mixed_precision = "fp16"'):
        config_from_toml("[training]\nfull_fp16 = true")
    with pytest.raises(ConfigError, match='full_bf16 = true needs mixed_precision = "bf16"'):
        config_from_toml('[training]\nfull_bf16 = true\nmixed_precision = "fp16"')
    config = config_from_toml('[training]\nfull_bf16 = true\nmixed_precision = "bf16"')
    assert config.training.full_bf16


def test_newer_schema_is_refused():
    with pytest.raises(ConfigError, match="schema_version = 2"):
        config_from_toml("schema_version = 2")


def test_invalid_toml_names_the_file():
    with pytest.raises(ConfigError, match="run.toml: not valid TOML"):
        config_from_toml("[model\n", "run.toml")


def test_flat_sd_scripts_config_file_loads():
    # sd-scripts --config_file: keys at top level or in any table, section names free.
    config = config_from_toml(
        'pretrained_model_name_or_path = "/m/sd21.safetensors"\n'
        "v2 = true\n"
        "[my_own_section]\n"
        "v_parameterization = true\n"
        'output_dir = "/out"\n'
    )
    assert config.model.pretrained_model_name_or_path == "/m/sd21.safetensors"
    assert config.model.v2 and config.model.v_parameterization
    assert config.saving.output_dir == "/out"


def test_flat_config_with_unknown_key_is_refused():
    with pytest.raises(ConfigError, match="outptu_dir.*Did you mean 'output_dir'"):
        config_from_toml('[x]\noutptu_dir = "/out"')


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return parser.parse_args(argv)


def test_cli_flags_override_the_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[model]\npretrained_model_name_or_path = "a"\nv2 = true\n')
    config = apply_cli_overrides(
        load_config(path), _parse(["--pretrained_model_name_or_path", "b", "--no-v2"])
    )
    assert config.model.pretrained_model_name_or_path == "b"
    assert config.model.v2 is False


def test_cli_values_are_checked_like_file_values():
    with pytest.raises(ConfigError, match="--clip_skip x: expected a whole number"):
        apply_cli_overrides(Config(), _parse(["--clip_skip", "x"]))
    with pytest.raises(ConfigError, match="full_fp16 = true needs mixed_precision"):
        apply_cli_overrides(Config(), _parse(["--full_fp16"]))
    with pytest.raises(ConfigError, match="learning_rate.*0.005:x"):
        apply_cli_overrides(Config(), _parse(["--learning_rate", "0.005:x"]))
    piecewise = apply_cli_overrides(Config(), _parse(["--learning_rate", "0.005:100, 1e-5"]))
    assert piecewise.optimizer.learning_rate == "0.005:100, 1e-5"


def test_every_option_is_a_cli_flag():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    flags = {a.dest for a in parser._actions}
    assert set(FIELDS) <= flags


def test_command_line_preview_reproduces_the_config():
    config = Config()
    config.model.pretrained_model_name_or_path = "/my models/sd 15.safetensors"
    config.model.v2 = True
    command = config_to_command(config)
    assert command.startswith("python -m ti_core train ")
    assert "'/my models/sd 15.safetensors'" in command and "--v2" in command
    args = _parse(__import__("shlex").split(command)[4:])
    assert apply_cli_overrides(Config(), args) == config


def test_cli_prints_one_line_and_exits_2_on_a_bad_config(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text("[model]\nclip_skp = 2\n")
    assert main(["print-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Did you mean 'clip_skip'" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_cli_print_config_applies_flags(tmp_path, capsys):
    path = tmp_path / "run.toml"
    path.write_text('[saving]\noutput_dir = "a"\n')
    assert main(["print-config", "--config_file", str(path), "--output_dir", "b"]) == 0
    assert config_from_toml(capsys.readouterr().out).saving.output_dir == "b"


def test_readme_option_table_is_current():
    import subprocess
    import sys

    from conftest import ROOT

    result = subprocess.run(
        [sys.executable, "tools/options_table.py", "--check"], cwd=ROOT, capture_output=True
    )
    assert result.returncode == 0, result.stdout


# Every dataset TOML key with a limit or choices, and its run option name where it has one.
LIMITED = [info for info in KEYS.values() if info.choices or {info.min, info.max} != {None}]
RUN_NAME = {toml_name: run_name for run_name, toml_name in ARGUMENT_NAMES.items()}


def edge_values(info: FieldInfo) -> list[tuple[Any, bool]]:
    """(value, accepted): each limit itself, and just past it."""
    step = 1 if info.type is int else 0.01
    cases = []
    if info.min is not None:
        cases += [(info.type(info.min), True), (info.type(info.min - step), False)]
    if info.max is not None:
        cases += [(info.type(info.max), True), (info.type(info.max + step), False)]
    if info.choices:
        outside = max(info.choices) + 1 if info.type is int else f"not {info.choices[0]}"
        cases += [*((choice, True) for choice in info.choices), (outside, False)]
    return cases


def toml_accepts(tmp_path, info: FieldInfo, value: Any) -> bool:
    line = tomli_w.dumps({info.name: value})
    at_subset = "subset" in info.levels
    text = "[[datasets]]\n" + ("" if at_subset else line)
    text += "[[datasets.subsets]]\nimage_dir = '/x'\n" + (line if at_subset else "")
    (tmp_path / "d.toml").write_text(text, encoding="utf-8")
    try:
        load_dataset_config(tmp_path / "d.toml")
    except DatasetError as error:
        assert "1 problem" in str(error) and info.name in str(error)
        return False
    return True


def run_config_accepts(name: str, value: Any) -> bool:
    try:
        set_option(Config(), name, value)
    except ConfigError as error:
        assert name in str(error)
        return False
    return True


@pytest.mark.parametrize("info", LIMITED, ids=lambda info: info.name)
def test_dataset_toml_and_run_config_take_the_same_values(tmp_path, info: FieldInfo):
    run_name = RUN_NAME.get(info.name, info.name)
    for value, accepted in edge_values(info):
        assert toml_accepts(tmp_path, info, value) == accepted, f"dataset TOML {info.name}={value}"
        if run_name in FIELDS:
            assert run_config_accepts(run_name, value) == accepted, f"--{run_name} {value}"


def test_every_limited_dataset_key_is_checked_on_both_sides():
    names = {info.name for info in LIMITED}
    assert {"min_bucket_reso", "bucket_reso_steps", "batch_size", "caption_dropout_rate"} <= names
    assert all(RUN_NAME.get(name, name) in FIELDS for name in names)
    assert all(FIELDS[name].section == "dataset" for name in RUN_KEYS)  # a widget each


def test_resolution_has_one_limit_in_both_forms(tmp_path):
    text = "[[datasets]]\nresolution = {}\n[[datasets.subsets]]\nimage_dir = '/x'\n"
    for toml_value, run_value, accepted in (("64", "64", True), ("[64, 63]", "64,63", False)):
        (tmp_path / "d.toml").write_text(text.format(toml_value), encoding="utf-8")
        if accepted:
            assert load_dataset_config(tmp_path / "d.toml")[0].resolution[1] == 64
            assert config_from_toml(f"[dataset]\nresolution = '{run_value}'").dataset.resolution
        else:
            with pytest.raises(DatasetError, match="at least 64 pixels"):
                load_dataset_config(tmp_path / "d.toml")
            with pytest.raises(ConfigError, match="at least 64 pixels"):
                config_from_toml(f"[dataset]\nresolution = '{run_value}'")
