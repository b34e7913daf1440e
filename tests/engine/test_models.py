"""Each family loads offline from a folder and a single file; bad files get one clear line."""

from __future__ import annotations

import argparse
import time

import pytest
import torch
from conftest import ROOT
from safetensors.torch import load_file, save_file

from ti_core.cli.main import main
from ti_core.errors import ModelError
from ti_core.models.demo import demo_dir
from ti_core.models.loading import inspect_model, load_model

FAMILIES = ("sd1", "sd2", "sdxl")


@pytest.fixture(scope="module", params=FAMILIES)
def demo(request, demo_cache):
    return request.param, demo_dir(request.param)


def _weights(pipeline) -> dict[str, torch.Tensor]:
    names = ["unet", "vae", "text_encoder", "text_encoder_2"]
    modules = {name: getattr(pipeline, name, None) for name in names}
    return {
        f"{name}.{key}": value
        for name, module in modules.items()
        if module is not None
        for key, value in module.state_dict().items()
    }


def test_folder_and_single_file_load_the_same_model(demo):
    family, folder = demo
    from_folder = load_model(str(folder / "model"))
    from_file = load_model(str(folder / "model.safetensors"))
    assert from_folder.family == from_file.family == family
    assert from_folder.v_parameterization == from_file.v_parameterization == (family == "sd2")
    folder_weights, file_weights = _weights(from_folder.pipeline), _weights(from_file.pipeline)
    assert folder_weights.keys() == file_weights.keys()
    assert all(torch.equal(folder_weights[k], file_weights[k]) for k in folder_weights)
    assert len(from_file.pipeline.tokenizer) == 49408


def test_demo_name_resolves_and_loads_fast(demo):
    family, _ = demo
    load_model(f"demo:{family}")  # warm the file cache and imports
    started = time.perf_counter()
    loaded = load_model(f"demo:{family}")
    assert loaded.family == family
    # Not a benchmark: a guard against the demo growing into a real-size model.
    assert time.perf_counter() - started < 10


def test_v2_flag_on_a_non_sd2_model_is_an_error(demo):
    family, folder = demo
    if family == "sd2":
        assert load_model(str(folder / "model.safetensors"), v2=True).family == "sd2"
        return
    with pytest.raises(ModelError, match="--v2 was given, but this is"):
        load_model(str(folder / "model.safetensors"), v2=True)


def test_prediction_type_comes_from_the_file_or_the_flag(tmp_path, demo_cache, caplog):
    source = demo_dir("sd2") / "model.safetensors"
    assert inspect_model(str(source)).v_parameterization is True
    # The same weights without the modelspec header: SD2 with no word on its prediction type.
    (tmp_path / "model").symlink_to(demo_dir("sd2") / "model", target_is_directory=True)
    bare = tmp_path / "model.safetensors"
    save_file(load_file(source), bare)
    assert inspect_model(str(bare)).v_parameterization is None
    with caplog.at_level("WARNING"):
        assert load_model(str(bare)).v_parameterization is False
    assert "--v_parameterization" in caplog.text
    flagged = load_model(str(bare), v_parameterization=True)
    assert flagged.pipeline.scheduler.config.prediction_type == "v_prediction"


def test_missing_path_is_one_clear_error(tmp_path):
    with pytest.raises(ModelError, match="file not found"):
        load_model(str(tmp_path / "nothing.safetensors"))
    with pytest.raises(ModelError, match="not a local file or folder"):
        load_model("no-such-user/no-such-model")


def test_truncated_safetensors_is_reported(tmp_path, demo_cache):
    source = (demo_dir("sd1") / "model.safetensors").read_bytes()
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(source[:1000])
    with pytest.raises(ModelError, match="truncated or corrupt"):
        load_model(str(broken))


def test_an_image_picked_as_model_is_not_called_unsafe(tmp_path, demo_cache):
    image = next((demo_dir("sd1") / "dataset").rglob("*.png"))
    with pytest.raises(ModelError, match="not a readable checkpoint"):
        load_model(str(image))


@pytest.mark.parametrize(
    ("tensors", "expected"),
    [
        ({"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(4, 4)}, "LoRA"),
        ({"emb_params": torch.zeros(2, 768)}, "embedding"),
        (
            {
                "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": torch.zeros(2, 2),
                "model.diffusion_model.x_embedder.proj.weight": torch.zeros(2, 2),
                "text_encoders.clip_l.weight": torch.zeros(2, 2),
            },
            "SD3",
        ),
    ],
)
def test_other_architectures_are_named(tmp_path, tensors, expected):
    path = tmp_path / "other.safetensors"
    save_file(tensors, path)
    with pytest.raises(ModelError, match=expected):
        load_model(str(path))


def test_ckpt_loads_only_with_weights_only(tmp_path, demo_cache):
    state = load_file(demo_dir("sd1") / "model.safetensors")
    (tmp_path / "model").symlink_to(demo_dir("sd1") / "model", target_is_directory=True)
    torch.save({"state_dict": state, "global_step": 100}, tmp_path / "model.ckpt")
    assert load_model(str(tmp_path / "model.ckpt")).family == "sd1"

    # Any object a tensors-only unpickler does not know stands for a pickle that runs code.
    torch.save({"state_dict": state, "extra": argparse.Namespace()}, tmp_path / "unsafe.ckpt")
    with pytest.raises(ModelError, match="more than tensors.*safetensors"):
        load_model(str(tmp_path / "unsafe.ckpt"))


def test_cli_reports_a_missing_model_in_one_line(tmp_path, capsys):
    code = main(["train", "--config", str(ROOT / "presets" / "demo.toml"),
                 "--pretrained_model_name_or_path", str(tmp_path / "x.ckpt"),
                 "--output_dir", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "file not found" in err and "Traceback" not in err


def test_cli_refuses_an_output_dir_it_cannot_write(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = main(["train", "--pretrained_model_name_or_path", "demo:sd1",
                 "--output_dir", str(blocker / "run")])  # fmt: skip
    assert code == 2 and "cannot write there" in capsys.readouterr().err


def test_cli_inspect_model_names_the_family(demo, capsys):
    family, folder = demo
    assert main(["inspect-model", str(folder / "model.safetensors")]) == 0
    out = capsys.readouterr().out
    assert {"sd1": "Stable Diffusion 1.x", "sd2": "Stable Diffusion 2.x", "sdxl": "SDXL"}[
        family
    ] in out
