"""What a model file or folder is (SD1 / SD2 / SDXL, epsilon or v), read without torch.

A .safetensors header is plain JSON, so the GUI can show the family of a file as soon
as it is picked. Pickled .ckpt files need torch to read; models.py passes their keys in.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from ti_core.errors import ModelError

FAMILIES = ("sd1", "sd2", "sdxl")
FAMILY_NAMES = {"sd1": "Stable Diffusion 1.x", "sd2": "Stable Diffusion 2.x", "sdxl": "SDXL"}

UNET_KEY = "model.diffusion_model.input_blocks.0.0.weight"
SD1_TEXT_KEYS = (
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
    "cond_stage_model.transformer.embeddings.token_embedding.weight",  # very old SD1 files
)
SD2_TEXT_KEY = "cond_stage_model.model.token_embedding.weight"
SDXL_TEXT_KEY = "conditioner.embedders.1.model.token_embedding.weight"


@dataclass(frozen=True)
class CheckpointInfo:
    family: str  # one of FAMILIES
    # True/False when the file says (metadata, a v_pred key); None when it cannot tell.
    v_parameterization: bool | None
    evidence: str  # how the prediction type was decided, for the log

    def describe(self) -> str:
        prediction = {True: "v-prediction", False: "epsilon", None: "prediction type unknown"}
        return f"{FAMILY_NAMES[self.family]}, {prediction[self.v_parameterization]}"


def read_safetensors_header(path: Path) -> tuple[list[str], dict[str, str]]:
    """Tensor names and the string metadata of a .safetensors file, reading only its header."""
    try:
        with open(path, "rb") as file:
            (length,) = struct.unpack("<Q", file.read(8))
            if length > 100_000_000:
                raise ValueError("header too large")
            header = json.loads(file.read(length))
    except FileNotFoundError:
        raise ModelError(f"{path}: file not found. Check the path.") from None
    except (struct.error, ValueError, UnicodeDecodeError):
        raise ModelError(
            f"{path}: not a readable .safetensors file (truncated or corrupt). "
            "Download or convert it again."
        ) from None
    metadata = header.pop("__metadata__", None) or {}
    return list(header), metadata


def classify_keys(
    path: Path, keys: list[str] | set[str], metadata: dict[str, str] | None = None
) -> CheckpointInfo:
    """Name the architecture of a single-file checkpoint from its tensor names."""
    keys = set(keys)
    metadata = metadata or {}
    if SDXL_TEXT_KEY in keys and UNET_KEY in keys:
        family = "sdxl"
    elif SD2_TEXT_KEY in keys and UNET_KEY in keys:
        family = "sd2"
    elif any(k in keys for k in SD1_TEXT_KEYS) and UNET_KEY in keys:
        family = "sd1"
    else:
        raise ModelError(f"{path}: {_what_else(keys)}")
    v_parameterization, evidence = _prediction_type(keys, metadata)
    return CheckpointInfo(family, v_parameterization, evidence)


def _prediction_type(keys: set[str], metadata: dict[str, str]) -> tuple[bool | None, str]:
    declared = metadata.get("modelspec.prediction_type", "")
    if declared in ("v", "v_prediction"):
        return True, "the file's modelspec.prediction_type"
    if declared in ("epsilon", "eps"):
        return False, "the file's modelspec.prediction_type"
    if "v_pred" in keys:
        return True, "the file's v_pred marker"
    return None, "nothing in the file"


def _what_else(keys: set[str]) -> str:
    """A one-line diagnosis of a file that is not an SD1/SD2/SDXL base checkpoint."""
    if any("lora_" in k or ".lora_down" in k or ".lora_A" in k for k in keys):
        return "this is a LoRA, not a base model. Pick the checkpoint it was made for."
    if {"emb_params", "clip_l", "clip_g", "string_to_param"} & keys or len(keys) <= 2:
        return "this is an embedding, not a base model. Pick a Stable Diffusion checkpoint."
    if any(k.startswith("model.diffusion_model.joint_blocks.") for k in keys):
        return "this is an SD3 checkpoint; only SD 1.x, 2.x and SDXL are supported."
    if any(k.startswith(("double_blocks.", "model.diffusion_model.double_blocks.")) for k in keys):
        return "this is a FLUX checkpoint; only SD 1.x, 2.x and SDXL are supported."
    if any(k.startswith("conditioner.embedders.0.model.") for k in keys):
        return "this is an SDXL refiner; train on the SDXL base model instead."
    if not any(k.startswith("model.diffusion_model.") for k in keys) and any(
        k.startswith(("encoder.", "decoder.", "first_stage_model.")) for k in keys
    ):
        return "this is a VAE on its own; pass it as --vae and pick a base model."
    return (
        "not a Stable Diffusion 1.x, 2.x or SDXL checkpoint (its tensor names match none). "
        "Pick a full base model file or a diffusers folder."
    )


def folder_info(folder: Path) -> CheckpointInfo:
    """Family and prediction type of a diffusers folder, from its JSON configs."""
    index = read_json(folder / "model_index.json")
    pipeline = index.get("_class_name", "")
    if "XL" in pipeline:
        family = "sdxl"
    else:
        text_config = read_json(folder / "text_encoder" / "config.json")
        # SD2's OpenCLIP encoder uses plain gelu where SD1's CLIP-L uses quick_gelu.
        is_open_clip = (
            text_config.get("hidden_act") == "gelu" or text_config.get("hidden_size") == 1024
        )
        family = "sd2" if is_open_clip else "sd1"
    scheduler = read_json(folder / "scheduler" / "scheduler_config.json")
    prediction = scheduler.get("prediction_type", "epsilon")
    return CheckpointInfo(family, prediction == "v_prediction", "the scheduler config")


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(
            f"{path.parent}: not a diffusers model folder ({path.name} is missing). "
            "Pick the folder that holds model_index.json, or a .safetensors/.ckpt file."
        ) from None
    except (OSError, ValueError) as error:
        raise ModelError(f"{path}: cannot read it ({error}).") from None


WEIGHT_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin")


def looks_like_hub_id(value: str) -> bool:
    """organisation/model, as on the Hugging Face hub; anything else is meant as a local path
    (the loader and the GUI's readiness check both ask this)."""
    parts = value.split("/")
    return (
        len(parts) == 2
        and all(parts)
        and not value.startswith((".", "/", "~"))
        and "\\" not in value
        and Path(value).suffix.lower() not in WEIGHT_FILE_SUFFIXES
    )
