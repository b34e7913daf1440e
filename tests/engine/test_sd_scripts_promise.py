"""sd-scripts' promise, kept: every option name train_textual_inversion.py accepts is ours (a
flag and a flat --config_file key), and kohya_ss GUI's Textual Inversion presets train here,
as the flat TOML the GUI writes and as the equivalent command line.

The option names are read from sd-scripts by hand (tests/data/sd_scripts_ti_options.txt); the
presets are kohya_ss GUI's own test configs (tests/data/kohya_ss/README.md names the sources).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from conftest import ROOT

from ti_core.cli.main import build_parser, main
from ti_core.config.run_config import FIELDS
from ti_core.config.toml_io import config_from_toml
from ti_core.errors import TiError
from ti_core.models.demo import demo_dir
from ti_core.run_folder.writer import read_events

DATA = ROOT / "tests" / "data"
KOHYA = DATA / "kohya_ss"
PRESETS = sorted(path.name for path in KOHYA.glob("TI-*.json"))
SD_SCRIPTS_TI_OPTION_COUNT = 170

# sd-scripts names that are not fields of our config: (where the value lands, a value to pass).
ALIASES: dict[str, tuple[str, Any]] = {
    "config_file": ("config_file", "other.toml"),
    "caption_extention": ("caption_extension", ".txt"),  # sd-scripts keeps the old misspelling
}


def sd_scripts_options() -> list[str]:
    lines = (DATA / "sd_scripts_ti_options.txt").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def value_for(name: str) -> tuple[str, Any]:
    """Where an sd-scripts option's value lands in our config, and a value that must pass."""
    return (name, FIELDS[name].default) if name in FIELDS else ALIASES[name]


def unknown(names: list[str]) -> list[str]:
    return [f"{name}: not a run option (FIELDS) nor an alias" for name in names
            if name not in FIELDS and name not in ALIASES]  # fmt: skip


def test_every_sd_scripts_ti_option_is_a_command_line_flag():
    names = sd_scripts_options()
    assert len(set(names)) == len(names) == SD_SCRIPTS_TI_OPTION_COUNT
    parser, refused = build_parser(), unknown(names)
    for name in (name for name in names if name in FIELDS or name in ALIASES):
        target, value = value_for(name)
        info = FIELDS.get(target)
        if info is not None and info.type is bool:
            words, expected = [f"--{name}"], True  # sd-scripts' switches take no value
        elif isinstance(value, list):
            words, expected = [f"--{name}", *value], value
        else:
            words, expected = [f"--{name}", str(value)], str(value)
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                args = parser.parse_args(["train", *words])
        except SystemExit:
            refused.append(f"{' '.join(words)}: {stderr.getvalue().strip().splitlines()[-1]}")
            continue
        # An abbreviation of a longer flag would parse too; the value must land under the name.
        if getattr(args, target, None) != expected:
            refused.append(f"{' '.join(words)}: parsed, but not as {target}")
    assert not refused, f"{len(refused)} sd-scripts options are not flags:\n" + "\n".join(refused)


def test_every_sd_scripts_ti_option_is_a_flat_config_file_key():
    names = sd_scripts_options()
    refused = unknown(names)
    for name in (name for name in names if name in FIELDS or name in ALIASES):
        target, value = value_for(name)
        try:
            config = config_from_toml(tomli_w.dumps({name: value}), source=f"{name}.toml")
        except TiError as error:
            refused.append(str(error))
            continue
        info = FIELDS.get(target)
        if info is not None and getattr(getattr(config, info.section), target) != value:
            refused.append(f"{name}.toml: {name} = {value!r} did not land in {target}")
    assert not refused, f"{len(refused)} sd-scripts options are not TOML keys:\n" + "\n".join(
        refused
    )


# --- kohya_ss GUI's presets, turned into sd-scripts options the way the GUI turns them -------
# kohya_gui/common_gui.py update_my_data: the numbers a preset holds as text, read as the
# GUI's widgets read them (a blank becomes the fallback).
GUI_NUMBERS: tuple[tuple[type, Any, tuple[str, ...]], ...] = (
    (int, 0, ("clip_skip", "epoch", "gradient_accumulation_steps", "keep_tokens", "lr_warmup",
              "max_data_loader_n_workers", "max_train_epochs", "save_every_n_epochs", "seed",
              "max_train_steps", "caption_dropout_every_n_epochs")),
    (int, 1, ("lr_scheduler_num_cycles",)),
    (int, 75, ("max_token_length",)),
    (float, 0.0, ("adaptive_noise_scale", "noise_offset", "learning_rate")),
    (float, 1.0, ("lr_scheduler_power",)),
)  # fmt: skip
# Widgets that older presets lack and whose default survives the GUI's filter below (the SDXL
# preset, saved by a newer GUI, shows dynamo_backend's default "no").
GUI_DEFAULTS = {"dynamo_backend": "no", "huber_c": 0.1, "huber_schedule": "snr", "loss_type": "l2"}
# kohya_gui/textual_inversion_gui.py train_model: the keys of its config TOML, by widget.
GUI_SAME_NAME_WORDS = (
    "adaptive_noise_scale async_upload bucket_no_upscale bucket_reso_steps cache_latents "
    "cache_latents_to_disk caption_extension clip_skip color_aug dataset_config "
    "disable_mmap_load_safetensors dynamo_backend enable_bucket flip_aug full_fp16 "
    "gradient_checkpointing huber_c huber_schedule huggingface_repo_id huggingface_token "
    "huggingface_repo_type huggingface_repo_visibility huggingface_path_in_repo init_word "
    "ip_noise_gamma ip_noise_gamma_random_strength learning_rate logging_dir log_config "
    "log_tracker_name log_tracker_config loss_type lr_scheduler lr_scheduler_power "
    "lr_scheduler_type max_bucket_reso max_timestep metadata_author metadata_description "
    "metadata_license metadata_tags metadata_title min_snr_gamma min_timestep mixed_precision "
    "multires_noise_discount multires_noise_iterations no_token_padding noise_offset "
    "noise_offset_random_strength noise_offset_type output_dir output_name "
    "pretrained_model_name_or_path prior_loss_weight random_crop reg_data_dir resume "
    "resume_from_huggingface sample_every_n_epochs sample_every_n_steps sample_sampler "
    "save_every_n_epochs save_every_n_steps save_last_n_steps save_last_n_steps_state "
    "save_model_as save_precision save_state save_state_on_train_end save_state_to_huggingface "
    "scale_v_pred_loss_like_noise_pred shuffle_caption token_string train_batch_size "
    "train_data_dir log_with v2 v_parameterization v_pred_like_loss vae vae_batch_size "
    "wandb_api_key"
)
GUI_SAME_NAME = GUI_SAME_NAME_WORDS.split()
GUI_AS_INT_WORDS = (
    "caption_dropout_every_n_epochs epoch gradient_accumulation_steps keep_tokens "
    "max_token_length max_train_epochs max_train_steps min_bucket_reso num_vectors_per_token "
    "persistent_data_loader_workers seed"
)
GUI_AS_INT = GUI_AS_INT_WORDS.split()
GUI_RENAMED = {"max_resolution": "resolution", "optimizer": "optimizer_type",
               "sdxl_no_half_vae": "no_half_vae", "weights": "weigts"}  # fmt: skip
# Keys the GUI writes that sd-scripts' parser does not have: sd-scripts ignores them in a
# config file (and would refuse them as flags), so they are no options. "weigts" is the GUI's
# misspelling: a preset's weights never reach sd-scripts.
GUI_ONLY_KEYS = {"epoch", "no_token_padding", "noise_offset_type", "stop_text_encoder_training",
                 "weigts"}  # fmt: skip
# Text boxes in the GUI, though resume_from_huggingface is a switch in sd-scripts.
HUB_TEXT_BOXES = ("huggingface_repo_id", "resume_from_huggingface")


def gui_values(preset: dict[str, Any]) -> dict[str, Any]:
    """The preset as the GUI's widgets hold it once loaded (common_gui.update_my_data)."""
    values = {**GUI_DEFAULTS, **preset}
    for kind, fallback, keys in GUI_NUMBERS:
        for key in (key for key in keys if key in values):
            try:
                values[key] = kind(values[key])
            except ValueError:
                values[key] = fallback
    if isinstance(values.get("xformers"), bool):
        values["xformers"] = "xformers" if values["xformers"] else "none"
    values.pop("use_wandb", None)  # "True" would mean log_with = "wandb"; the presets say false
    return values


def gui_config_toml(values: dict[str, Any]) -> dict[str, Any]:
    """The flat config TOML kohya_ss GUI writes for sd-scripts from the widget values (and,
    as the GUI does, the sample prompt written into a file in the output folder)."""
    data = {key: values.get(key) for key in GUI_SAME_NAME}
    data |= {new: values.get(old) for old, new in GUI_RENAMED.items()}
    data |= {key: int(values.get(key) or 0) for key in GUI_AS_INT}
    steps, epoch = data["max_train_steps"], data["epoch"]
    data["lr_warmup_steps"] = round(int(values.get("lr_warmup", 0)) * steps / 100)
    data["stop_text_encoder_training"] = math.ceil(
        steps / 100 * int(values.get("stop_text_encoder_training", 0))
    )
    cycles = values.get("lr_scheduler_num_cycles", "")
    data["lr_scheduler_num_cycles"] = int(cycles) if cycles != "" else epoch
    for key in ("lr_scheduler_args", "optimizer_args"):
        data[key] = str(values.get(key, "")).replace('"', "").split()
    # create_prompt_file: the prompt text goes into <output_dir>/sample/prompt.txt.
    prompt_file = Path(values["output_dir"]) / "sample" / "prompt.txt"
    prompt_file.parent.mkdir(parents=True, exist_ok=True)
    prompt_file.write_text(values.get("sample_prompts", ""), encoding="utf-8")
    data["sample_prompts"] = str(prompt_file)
    data["wandb_run_name"] = values.get("wandb_run_name") or values["output_name"]
    data["xformers"], data["sdpa"] = values["xformers"] == "xformers", values["xformers"] == "sdpa"
    data["use_object_template"] = values.get("template") == "object template"
    data["use_style_template"] = values.get("template") == "style template"
    # The GUI's filter: blanks, False and None go, and 0 == False, so do zeros.
    data = {key: value for key, value in data.items() if value not in ("", False, None)}
    data["max_data_loader_n_workers"] = int(values.get("max_data_loader_n_workers") or 0)
    return dict(sorted(data.items()))


def sd_scripts_part(gui_toml: dict[str, Any]) -> dict[str, Any]:
    """What of the GUI's TOML sd-scripts reads: its options; the GUI's own keys are dropped."""
    options = set(sd_scripts_options())
    ignored = set(gui_toml) - options
    assert ignored <= GUI_ONLY_KEYS, f"not sd-scripts options: {sorted(ignored - GUI_ONLY_KEYS)}"
    return {key: value for key, value in gui_toml.items() if key in options}


def as_flags(options: dict[str, Any]) -> list[str]:
    """The options as sd-scripts flags on an `accelerate launch train_textual_inversion.py`
    line: a switch alone, a list as its words, everything else as --name=value."""
    flags = []
    for name, value in options.items():
        if value is True:
            flags.append(f"--{name}")
        elif isinstance(value, list):
            flags += [f"--{name}", *value] if value else []
        else:
            flags.append(f"--{name}={value}")
    return flags


def small_image_folder(tmp_path: Path) -> Path:
    """Four demo pictures in the N_name folder the GUI checks for (1 repeat)."""
    source = next((demo_dir("sd1") / "dataset").iterdir())
    folder = tmp_path / "img" / "1_zxc toy"
    folder.mkdir(parents=True)
    for image in sorted(source.glob("*.png"))[:4]:
        shutil.copy(image, folder)
    return folder


def typed_into_the_gui(preset: dict[str, Any], images: Path, run_dir: Path) -> dict[str, Any]:
    """What the test changes in a preset, as a user would in the GUI's fields: the demo model,
    a small demo image folder, an output folder, 2 steps. bucket_reso_steps 1 is refused by
    sd-scripts itself (test below), so it becomes 64, which every model family accepts. The
    Hub text boxes that hold the text "False" (left by an older GUI) are emptied: as a repo id
    it asks for an upload to a repo named False, which no test may do."""
    family = "sdxl" if preset.get("sdxl") else "sd1"
    typed = {"pretrained_model_name_or_path": f"demo:{family}", "output_dir": str(run_dir),
             "logging_dir": str(run_dir / "logs"), "max_train_steps": 2,
             "bucket_reso_steps": 64}  # fmt: skip
    typed |= {key: "" for key in HUB_TEXT_BOXES if preset.get(key) == "False"}
    if preset.get("dataset_config"):  # kohya_ss' own dataset TOML, pointed at our images
        dataset = (KOHYA / "dataset.toml").read_text(encoding="utf-8")
        dataset = dataset.replace("./test/img/10_darius kawasaki person", images.as_posix())
        dataset_toml = run_dir.parent / "dataset.toml"
        dataset_toml.write_text(dataset, encoding="utf-8")
        typed["dataset_config"] = str(dataset_toml)
    else:
        typed["train_data_dir"] = str(images.parent)
    return {**preset, **typed}


# One child process per way trains every preset through main(), which is all that
# `python -m ti_core` runs: one import of torch per way, not one per run. It imports the
# tests' conftest first, so the children cannot reach the network either.
CHILD = """
import json, sys
sys.path.insert(0, "tests")
import conftest
from ti_core.cli.main import main
codes = []
for argv in json.loads(sys.argv[1]):
    print("=== run", len(codes), flush=True)
    try:
        codes.append(main(argv))
    except SystemExit as refused:  # argparse's way of refusing a flag
        codes.append(refused.code)
print("=== exit codes", json.dumps(codes), flush=True)
"""
WAYS = ("config_file", "command_line")


@pytest.fixture(scope="module")
def preset_runs(tmp_path_factory, demo_cache) -> dict[tuple[str, str], tuple[Any, Path, str]]:
    """(preset, way) -> (exit code, run folder, what the run printed), for every preset."""
    root = tmp_path_factory.mktemp("presets")
    argvs: dict[str, list[list[str]]] = {way: [] for way in WAYS}
    for name in PRESETS:
        preset = json.loads((KOHYA / name).read_text(encoding="utf-8"))
        demo_dir("sdxl" if preset.get("sdxl") else "sd1")  # built here, not by two children
        images = small_image_folder(root / name)
        for way in WAYS:
            gui_toml = gui_config_toml(
                gui_values(typed_into_the_gui(preset, images, root / name / way))
            )
            if way == "command_line":
                argvs[way].append(["train", *as_flags(sd_scripts_part(gui_toml))])
                continue
            # The file as the GUI writes it, its own keys included: it must run unchanged.
            config_file = root / name / "config_textual_inversion.toml"
            config_file.write_text(tomli_w.dumps(gui_toml), encoding="utf-8")
            argvs[way].append(["train", "--config_file", str(config_file)])
    env = {**os.environ, "TI_TRAINER_CACHE": str(demo_cache)}
    children = {way: subprocess.Popen(
        [sys.executable, "-u", "-c", CHILD, json.dumps(argvs[way])], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    ) for way in WAYS}  # fmt: skip
    runs = {}
    for way, child in children.items():
        output = child.communicate(timeout=900)[0]
        head, found, codes_json = output.rpartition("=== exit codes ")
        segments = (head if found else output).split("=== run ")[1:]
        codes = json.loads(codes_json) if found else []
        for index, name in enumerate(PRESETS):
            code = codes[index] if index < len(codes) else None  # None: the child died
            said = segments[index] if index < len(segments) else output[-3000:]
            runs[name, way] = (code, root / name / way, said)
    return runs


@pytest.mark.parametrize("preset_name", PRESETS)
def test_kohya_ss_ti_preset_trains_from_its_config_file_and_its_command_line(
    preset_name, preset_runs
):
    output_name = json.loads((KOHYA / preset_name).read_text(encoding="utf-8"))["output_name"]
    resolved = {}
    for way in WAYS:
        code, run_dir, said = preset_runs[preset_name, way]
        assert code == 0, f"{preset_name} by {way} ended with {code}:\n{said[-3000:]}"
        events = read_events(run_dir / "events.jsonl")
        assert events[-1]["type"] == "done" and events[-1]["reason"] == "finished"
        assert (run_dir / f"{output_name}.safetensors").is_file()
        # xformers cannot act on a CPU: the run says so and goes on with PyTorch's attention.
        warnings = [event["message"] for event in events if event["type"] == "warning"]
        assert any("xformers" in message for message in warnings), warnings
        config_text = (run_dir / "config.toml").read_text(encoding="utf-8")
        resolved[way] = config_text.replace(run_dir.as_posix(), "<run>")
    assert resolved["config_file"] == resolved["command_line"]


def test_a_preset_bucket_reso_steps_of_1_is_refused_as_sd_scripts_refuses_it(tmp_path, capsys):
    """sd-scripts' verify_bucket_reso_steps(64) stops TI on SD 1.x at bucket_reso_steps 1, so
    kohya_ss GUI's TI presets do not run there unchanged; we stop too, saying why."""
    preset = json.loads((KOHYA / "TI-AdamW8bit.json").read_text(encoding="utf-8"))
    images, steps = small_image_folder(tmp_path), preset["bucket_reso_steps"]
    code = main(["train", "--pretrained_model_name_or_path=demo:sd1",
                 f"--train_data_dir={images.parent}", f"--output_dir={tmp_path / 'run'}",
                 "--token_string=zxc", "--init_word=*", "--use_style_template",
                 "--enable_bucket", f"--bucket_reso_steps={steps}"])  # fmt: skip
    assert code == 2
    assert re.search(r"bucket_reso_steps\D+1\b", capsys.readouterr().err)
    assert not (tmp_path / "run" / "zxc.safetensors").exists()
