"""The shipped diffusers config folders (ti_core/assets/models/*) describe the real architectures.

A single-file checkpoint (.safetensors/.ckpt) is loaded offline with
``from_single_file(path, config=<one of these folders>, local_files_only=True, tokenizer=...)``,
so every shape has to match the published models exactly. Each component is built on the meta
device (no memory, no weights, no network) and its parameter count is compared with the
published figure.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
accelerate = pytest.importorskip("accelerate")

MODELS_DIR = Path(__file__).resolve().parents[2] / "ti_core" / "assets" / "models"

CLIP_L = 123_060_480  # openai/clip-vit-large-patch14 text model (SD1.x, SDXL text_encoder)
OPENCLIP_H_23 = 340_387_840  # OpenCLIP ViT-H/14 text tower, last of 24 blocks dropped (SD2.x)
OPENCLIP_BIGG_PROJ = 694_659_840  # OpenCLIP ViT-bigG/14 text tower + projection (SDXL)
SD_VAE = 83_653_863  # the same AutoencoderKL shape for SD1.x, SD2.x and SDXL

# folder -> component -> (class name in model_index.json, parameter count)
EXPECTED_PARAMS = {
    "sd15": {
        "unet": ("UNet2DConditionModel", 859_520_964),
        "vae": ("AutoencoderKL", SD_VAE),
        "text_encoder": ("CLIPTextModel", CLIP_L),
    },
    "sd2-base": {
        "unet": ("UNet2DConditionModel", 865_910_724),
        "vae": ("AutoencoderKL", SD_VAE),
        "text_encoder": ("CLIPTextModel", OPENCLIP_H_23),
    },
    "sd2-v": {
        "unet": ("UNet2DConditionModel", 865_910_724),
        "vae": ("AutoencoderKL", SD_VAE),
        "text_encoder": ("CLIPTextModel", OPENCLIP_H_23),
    },
    "sdxl-base": {
        "unet": ("UNet2DConditionModel", 2_567_463_684),
        "vae": ("AutoencoderKL", SD_VAE),
        "text_encoder": ("CLIPTextModel", CLIP_L),
        "text_encoder_2": ("CLIPTextModelWithProjection", OPENCLIP_BIGG_PROJ),
    },
}

# folder -> (pipeline, scheduler, prediction_type, VAE scaling_factor, default resolution)
EXPECTED_PIPELINE = {
    "sd15": ("StableDiffusionPipeline", "PNDMScheduler", "epsilon", 0.18215, 512),
    "sd2-base": ("StableDiffusionPipeline", "PNDMScheduler", "epsilon", 0.18215, 512),
    "sd2-v": ("StableDiffusionPipeline", "DDIMScheduler", "v_prediction", 0.18215, 768),
    "sdxl-base": ("StableDiffusionXLPipeline", "EulerDiscreteScheduler", "epsilon", 0.13025, 1024),
}

FOLDERS = sorted(EXPECTED_PIPELINE)
COMPONENT_CASES = [(folder, comp) for folder in FOLDERS for comp in EXPECTED_PARAMS[folder]]


def _read(folder: str, *parts: str) -> dict:
    return json.loads((MODELS_DIR / folder).joinpath(*parts).read_text(encoding="utf-8"))


def _build_on_meta(folder: str, component: str, class_name: str):
    path = MODELS_DIR / folder / component
    with accelerate.init_empty_weights():
        if class_name in ("UNet2DConditionModel", "AutoencoderKL"):
            cls = getattr(diffusers, class_name)
            model = cls.from_config(cls.load_config(path))
        else:
            cls = getattr(transformers, class_name)
            model = cls(transformers.CLIPTextConfig.from_pretrained(path))
    return model


def test_config_folders_hold_configs_only():
    assert set(FOLDERS) <= {p.name for p in MODELS_DIR.iterdir() if p.is_dir()}
    for folder in FOLDERS:
        files = sorted(
            p.relative_to(MODELS_DIR / folder).as_posix()
            for p in (MODELS_DIR / folder).rglob("*")
            if p.is_file()
        )
        expected = ["model_index.json", "scheduler/scheduler_config.json"]
        expected += [f"{comp}/config.json" for comp in EXPECTED_PARAMS[folder]]
        assert files == sorted(expected), folder  # configs only: no weights, no tokenizer folders


@pytest.mark.parametrize(("folder", "component"), COMPONENT_CASES)
def test_component_parameter_count(folder, component):
    class_name, expected = EXPECTED_PARAMS[folder][component]
    index = _read(folder, "model_index.json")
    assert index[component][1] == class_name
    model = _build_on_meta(folder, component, class_name)
    assert all(p.device.type == "meta" for p in model.parameters())
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == expected, f"{folder}/{component}: {n_params:,} != {expected:,}"


@pytest.mark.parametrize("folder", FOLDERS)
def test_model_index_loads_and_names_the_pipeline(folder):
    pipeline_name, scheduler_name, *_ = EXPECTED_PIPELINE[folder]
    config = diffusers.DiffusionPipeline.load_config(str(MODELS_DIR / folder))
    assert config["_class_name"] == pipeline_name
    assert config["scheduler"] == ["diffusers", scheduler_name]
    assert config["tokenizer"] == ["transformers", "CLIPTokenizer"]

    # Every module the pipeline's __init__ expects is listed, so from_single_file can fill it in.
    pipeline_cls = getattr(diffusers, pipeline_name)
    expected_modules, _ = pipeline_cls._get_signature_keys(pipeline_cls)
    missing = set(expected_modules) - set(config) - set(pipeline_cls._optional_components)
    assert not missing, missing

    if pipeline_name == "StableDiffusionPipeline":
        assert config["safety_checker"] == [None, None]
        assert config["feature_extractor"] == [None, None]
        assert config["requires_safety_checker"] is False
    else:
        assert config["tokenizer_2"] == ["transformers", "CLIPTokenizer"]
        assert config["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
        assert config["force_zeros_for_empty_prompt"] is True


@pytest.mark.parametrize("folder", FOLDERS)
def test_scheduler_and_prediction_type(folder):
    _, scheduler_name, prediction_type, *_ = EXPECTED_PIPELINE[folder]
    scheduler_cls = getattr(diffusers, scheduler_name)
    scheduler = scheduler_cls.from_pretrained(
        str(MODELS_DIR / folder), subfolder="scheduler", local_files_only=True
    )
    assert type(scheduler).__name__ == scheduler_name
    cfg = scheduler.config
    assert cfg.prediction_type == prediction_type
    assert cfg.num_train_timesteps == 1000
    assert cfg.beta_schedule == "scaled_linear"
    assert cfg.beta_start == pytest.approx(0.00085)
    assert cfg.beta_end == pytest.approx(0.012)
    assert cfg.steps_offset == 1


@pytest.mark.parametrize("folder", FOLDERS)
def test_architecture_facts(folder):
    *_, scaling_factor, resolution = EXPECTED_PIPELINE[folder]
    unet = _read(folder, "unet", "config.json")
    vae = _read(folder, "vae", "config.json")
    text_encoder = _read(folder, "text_encoder", "config.json")

    assert vae["scaling_factor"] == pytest.approx(scaling_factor)
    if folder == "sdxl-base":
        assert vae["force_upcast"] is True  # the SDXL VAE overflows in fp16
    assert unet["in_channels"] == unet["out_channels"] == 4
    assert unet["sample_size"] * 8 == resolution

    # The one deliberate change from the published files: they say "float16" for some text
    # encoders, and transformers 5 builds CLIPTextModelWithProjection in config.torch_dtype, so
    # from_single_file without torch_dtype would silently give an fp16 text_encoder_2.
    for name in EXPECTED_PARAMS[folder]:
        if name.startswith("text_encoder"):
            assert _read(folder, name, "config.json")["torch_dtype"] == "float32", name

    if folder == "sdxl-base":
        text_encoder_2 = _read(folder, "text_encoder_2", "config.json")
        hidden = text_encoder["hidden_size"] + text_encoder_2["hidden_size"]
        assert unet["cross_attention_dim"] == hidden == 2048
        assert unet["transformer_layers_per_block"] == [1, 2, 10]
        assert unet["addition_embed_type"] == "text_time"
        assert unet["addition_time_embed_dim"] == 256
        # pooled text embedding (1280) + 6 micro-conditioning values x 256
        add_dim = text_encoder_2["projection_dim"] + 6 * 256
        assert unet["projection_class_embeddings_input_dim"] == add_dim == 2816
        assert text_encoder["hidden_act"] == "quick_gelu"
        assert text_encoder_2["hidden_act"] == "gelu"
        assert text_encoder_2["num_hidden_layers"] == 32
    else:
        assert unet["cross_attention_dim"] == text_encoder["hidden_size"]

    if folder == "sd15":
        assert text_encoder["hidden_act"] == "quick_gelu"
        assert unet["attention_head_dim"] == 8
        assert unet["use_linear_projection"] is False
    elif folder.startswith("sd2"):
        assert text_encoder["hidden_act"] == "gelu"
        assert text_encoder["num_hidden_layers"] == 23
        assert text_encoder["projection_dim"] == 512
        assert unet["attention_head_dim"] == [5, 10, 20, 20]
        assert unet["use_linear_projection"] is True
        # SD 2.1 768-v upcasts attention to fp32 (NaNs in fp16 otherwise); the 512 base does not.
        assert unet["upcast_attention"] is (folder == "sd2-v")
