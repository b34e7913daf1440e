"""Tiny random SD1 / SD2 / SDXL models and a synthetic toy dataset (`python -m ti_core make-demo`).

The models are structurally the real families at a few thousandth of their size, saved
both as a diffusers folder and as one original-layout .safetensors file; they draw noise,
but they exercise every code path in seconds on a CPU. Everything is deterministic.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ti_core.errors import ModelError, TiError
from ti_core.models.checkpoint_info import FAMILY_NAMES
from ti_core.models.demo_dataset import DEMO_CLASS, DEMO_TOKEN, IMAGE_SIZE, demo_dataset
from ti_core.models.ldm_layout import FAMILIES, save_single_file, to_single_file_state_dict
from ti_core.models.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

MARKER_FILE = "demo.json"

VOCAB_SIZE = 49408
BOS_ID, EOS_ID = 49406, 49407
PAD_ID_BANG = 0  # "!" pads SD2's and SDXL's OpenCLIP tokenizer

MODELSPEC = {
    "sd1": {"architecture": "stable-diffusion-v1", "prediction_type": "epsilon"},
    "sd2": {"architecture": "stable-diffusion-v2-768-v", "prediction_type": "v"},
    "sdxl": {"architecture": "stable-diffusion-xl-v1-base", "prediction_type": "epsilon"},
}
# One seed per component, so changing one model never changes the others' weights.
SEED_UNET, SEED_VAE, SEED_TEXT_ENCODER, SEED_TEXT_ENCODER_2 = 1, 2, 3, 4


@dataclass
class DemoModels:
    pipeline: object  # StableDiffusionPipeline or StableDiffusionXLPipeline
    single_file: dict[str, Tensor]  # the same weights in the original checkpoint layout


def make_demo(out_dir: Path, family: str = "sd1", force: bool = False) -> Path:
    """Build the demo for one family into `out_dir` and return it.

    Writes `model/` (diffusers folder), `model.safetensors` (original single-file layout)
    and `dataset/10_demotoy toy/`. A demo of the same family already there is reused unless
    `force`; one of another family is replaced; any other non-empty folder is refused.
    The demo is built next to `out_dir` and renamed into place at the end, so a half-built
    one is never seen.
    """
    out_dir = Path(out_dir)
    if family not in FAMILIES:
        raise TiError(f"make-demo: unknown family {family!r}; use one of {', '.join(FAMILIES)}.")
    if _existing_demo_family(out_dir) == family and not force:
        return out_dir

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        _write_demo(staging, family)
        _replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _write_demo(folder: Path, family: str) -> None:
    models = build_demo_models(family)
    models.pipeline.save_pretrained(folder / "model", safe_serialization=True)
    save_single_file(folder / "model.safetensors", models.single_file, modelspec_metadata(family))
    image_dir = demo_dataset(folder / "dataset")
    marker = {
        "family": family,
        "model": "model",
        "single_file": "model.safetensors",
        "train_data_dir": "dataset",
        "image_dir": f"dataset/{image_dir.name}",
        "token_string": DEMO_TOKEN,
        "class_word": DEMO_CLASS,
        "resolution": IMAGE_SIZE,
    }
    (folder / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


def _existing_demo_family(out_dir: Path) -> str | None:
    """The family of a complete demo already in `out_dir`; None when there is none.

    Refuses a folder that holds something else, so `force` never deletes a user's files.
    """
    if not out_dir.exists():
        return None
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        return None
    try:
        return json.loads((out_dir / MARKER_FILE).read_text(encoding="utf-8"))["family"]
    except (OSError, ValueError, KeyError, TypeError):
        raise TiError(
            f"make-demo: {out_dir} exists and is not a demo folder; "
            "pick a new or empty folder for the demo."
        ) from None


def _replace_dir(new: Path, target: Path) -> None:
    if not target.exists():
        new.rename(target)
        return
    old = Path(tempfile.mkdtemp(prefix=f"{target.name}.old-", dir=target.parent))
    target.rename(old / target.name)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def modelspec_metadata(family: str) -> dict[str, str]:
    """SAI model spec metadata for the single file; no date, so rebuilds are byte-identical."""
    return {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": MODELSPEC[family]["architecture"],
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
        "modelspec.title": f"ti-trainer demo {family}",
        "modelspec.description": "Tiny random weights for tests and the demo; it draws noise.",
        "modelspec.resolution": f"{IMAGE_SIZE}x{IMAGE_SIZE}",
        "modelspec.prediction_type": MODELSPEC[family]["prediction_type"],
    }


# --- Models -----------------------------------------------------------------------------


def build_demo_models(family: str) -> DemoModels:
    """The tiny pipeline of `family` and its single-file state dict, the same every time."""
    if family == "sd1":
        return _build_sd1()
    if family == "sd2":
        return _build_sd2()
    if family == "sdxl":
        return _build_sdxl()
    raise TiError(f"make-demo: unknown family {family!r}; use one of {', '.join(FAMILIES)}.")


def _build_sd1() -> DemoModels:
    from diffusers import StableDiffusionPipeline

    text_encoder = _clip_text_model(hidden_size=32, hidden_act="quick_gelu", pad_token_id=EOS_ID)
    unet = _unet(
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(32, 32, 64, 64),
        attention_head_dim=8,  # SD1's "8" is the number of heads
        cross_attention_dim=32,
    )
    vae = _vae(scaling_factor=0.18215)
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=load_tokenizer(),
        unet=unet,
        scheduler=_scheduler("epsilon"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    single_file = to_single_file_state_dict(
        "sd1", unet.state_dict(), vae.state_dict(), text_encoder.state_dict()
    )
    return DemoModels(pipeline, single_file)


def _build_sd2() -> DemoModels:
    """SD2 768-v: OpenCLIP-H text encoder (gelu, "!" padding), linear projections, v-prediction.

    Like the real release, the single file keeps the OpenCLIP tower whole (one more layer
    and the text projection) while diffusers' text encoder drops what SD2 never uses.
    """
    from diffusers import StableDiffusionPipeline

    open_clip = _clip_text_model(
        hidden_size=64,
        hidden_act="gelu",
        pad_token_id=PAD_ID_BANG,
        num_hidden_layers=4,
        with_projection=True,
    )
    text_encoder = _clip_text_model(
        hidden_size=64, hidden_act="gelu", pad_token_id=PAD_ID_BANG, num_hidden_layers=3
    )
    _copy_first_layers(open_clip, text_encoder)
    unet = _unet(
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(32, 32, 64, 64),
        attention_head_dim=[4, 4, 8, 8],  # heads per level: 8 channels each, as SD2 has 64
        cross_attention_dim=64,
        use_linear_projection=True,
        upcast_attention=True,
    )
    vae = _vae(scaling_factor=0.18215)
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=load_tokenizer("!"),
        unet=unet,
        scheduler=_scheduler("v_prediction"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    single_file = to_single_file_state_dict(
        "sd2", unet.state_dict(), vae.state_dict(), open_clip.state_dict()
    )
    return DemoModels(pipeline, single_file)


def _build_sdxl() -> DemoModels:
    """SDXL base: CLIP-L + OpenCLIP-bigG (different widths, as in the real model), text_time."""
    from diffusers import StableDiffusionXLPipeline

    text_encoder = _clip_text_model(hidden_size=32, hidden_act="quick_gelu", pad_token_id=EOS_ID)
    text_encoder_2 = _clip_text_model(
        hidden_size=64,
        hidden_act="gelu",
        pad_token_id=PAD_ID_BANG,
        with_projection=True,
        seed=SEED_TEXT_ENCODER_2,
    )
    time_embed_dim = 8
    unet = _unet(
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 64),
        attention_head_dim=[4, 8, 8],
        transformer_layers_per_block=[1, 1, 2],
        cross_attention_dim=32 + 64,  # both encoders' hidden states, concatenated
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        # pooled bigG embedding + 6 size/crop numbers, each embedded in time_embed_dim
        projection_class_embeddings_input_dim=64 + 6 * time_embed_dim,
    )
    vae = _vae(scaling_factor=0.13025, force_upcast=True)
    pipeline = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=load_tokenizer(),
        tokenizer_2=load_tokenizer("!"),
        unet=unet,
        scheduler=_scheduler("epsilon"),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    single_file = to_single_file_state_dict(
        "sdxl",
        unet.state_dict(),
        vae.state_dict(),
        text_encoder.state_dict(),
        text_encoder_2.state_dict(),
    )
    return DemoModels(pipeline, single_file)


def _clip_text_model(
    hidden_size: int,
    hidden_act: str,
    pad_token_id: int,
    num_hidden_layers: int = 3,
    with_projection: bool = False,
    seed: int = SEED_TEXT_ENCODER,
):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=77,
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        hidden_act=hidden_act,
        projection_dim=hidden_size,
        bos_token_id=BOS_ID,
        # The real id (not the legacy 2) makes the pooled output the first end token even
        # when placeholder tokens get ids above it.
        eos_token_id=EOS_ID,
        pad_token_id=pad_token_id,
    )
    torch.manual_seed(seed)
    model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return model_class(config).eval()


def _copy_first_layers(source, target) -> None:
    """Load `target` (fewer layers, no projection) with the matching weights of `source`."""
    wanted = target.state_dict()
    weights = {}
    for key, tensor in source.state_dict().items():
        name = key.removeprefix("text_model.")
        if name in wanted:
            weights[name] = tensor
    target.load_state_dict(weights, strict=True)


def _unet(**config):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(SEED_UNET)
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 8,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        norm_num_groups=32,
        **config,
    ).eval()


def _vae(scaling_factor: float, force_upcast: bool = False):
    from diffusers import AutoencoderKL

    torch.manual_seed(SEED_VAE)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,  # 3 downsamples: 64 px -> 8x8 latents
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=IMAGE_SIZE,
        scaling_factor=scaling_factor,
        force_upcast=force_upcast,
    ).eval()


def _scheduler(prediction_type: str):
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=prediction_type,
        timestep_spacing="leading",
        steps_offset=1,
    )


# ---- where the demos live -------------------------------------------------------------------

DEMO_PREFIX = "demo:"


def cache_root() -> Path:
    """Where built demo models live; TI_TRAINER_CACHE moves it (tests use a temporary one)."""
    configured = os.environ.get("TI_TRAINER_CACHE")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ti-trainer"


def demo_dir(family: str) -> Path:
    """The demo of a family (model + dataset), built on first use."""
    if family not in FAMILY_NAMES:
        raise ModelError(
            f"{DEMO_PREFIX}{family}: unknown demo. Use demo:sd1, demo:sd2 or demo:sdxl."
        )
    out = cache_root() / "demo" / family
    if not (out / "model" / "model_index.json").is_file():
        log.info("building the %s demo model in %s (once)", family, out)
        make_demo(out, family)
    return out


def resolve_model_path(name: str) -> str:
    """Turn demo:FAMILY into the demo's folder; anything else is returned as given."""
    if name.startswith(DEMO_PREFIX):
        return str(demo_dir(name[len(DEMO_PREFIX) :]) / "model")
    return name
