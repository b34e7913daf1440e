"""Load a Stable Diffusion base model offline: a diffusers folder, a single file, or a hub id.

Single files load with the configs shipped in ti_core/assets/models and the vendored
tokenizer, so nothing is fetched. Pickled .ckpt files are only ever read with
`weights_only=True`: a pickle can run code, and a model file has no reason to.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ti_core.errors import ModelError
from ti_core.models.assets import MODEL_CONFIGS_DIR
from ti_core.models.checkpoint_info import (
    FAMILY_NAMES,
    CheckpointInfo,
    classify_keys,
    folder_info,
    looks_like_hub_id,
    read_json,
    read_safetensors_header,
)
from ti_core.models.demo import resolve_model_path
from ti_core.models.safe_pickle import first_line, load_weights_only
from ti_core.models.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin")


@dataclass
class LoadedModel:
    """A loaded base model and what we know about it."""

    pipeline: Any  # StableDiffusionPipeline or StableDiffusionXLPipeline
    family: str  # sd1 | sd2 | sdxl
    v_parameterization: bool
    source: str  # what the user named, for logs and metadata

    def describe(self) -> str:
        prediction = "v-prediction" if self.v_parameterization else "epsilon"
        return f"{FAMILY_NAMES[self.family]} ({prediction}) from {self.source}"


def inspect_model(name: str) -> CheckpointInfo:
    """Family and prediction type of a model path, reading as little as possible."""
    path = Path(resolve_model_path(name))
    if path.is_dir():
        return folder_info(path)
    if path.suffix == ".safetensors":
        keys, metadata = read_safetensors_header(path)
        return classify_keys(path, keys, metadata)
    return classify_keys(path, _load_pickle_state_dict(path).keys(), {})


def load_model(
    name: str,
    v2: bool = False,
    v_parameterization: bool = False,
    vae: str = "",
    dtype: Any = None,
    device: Any = None,
    disable_mmap: bool = False,
) -> LoadedModel:
    """Load a base model. `v2` / `v_parameterization` are sd-scripts' flags: a file that says
    what it is wins over a missing flag, and a --v2 that contradicts the file is an error.
    `device` (sd-scripts' --lowram): a CUDA device to load the weights straight into, so the
    whole model never sits in RAM; None loads into RAM as usual. `disable_mmap`
    (disable_mmap_load_safetensors): .safetensors files are read whole, not memory-mapped."""
    gpu = _gpu_device(device)
    if disable_mmap:
        log.info("disable_mmap_load_safetensors: reading .safetensors files without memory-mapping")
    if not name:
        raise ModelError(
            "No base model given: set pretrained_model_name_or_path (a diffusers folder, "
            "a .safetensors/.ckpt file, a hub id, or demo:sd1)."
        )
    path = Path(resolve_model_path(name))
    if path.is_dir():
        family, v_pred = _reconcile(name, folder_info(path), v2, v_parameterization)
        pipeline = _load_folder(path, family, dtype, gpu, disable_mmap)
    elif path.is_file() or path.suffix.lower() in SINGLE_FILE_SUFFIXES:
        if not path.is_file():
            raise ModelError(
                f"{path}: file not found. Check the path (or pick a diffusers folder)."
            )
        family, v_pred = _reconcile(name, inspect_model(str(path)), v2, v_parameterization)
        pipeline = _load_single_file(path, family, v_pred, dtype, gpu, disable_mmap)
    elif not looks_like_hub_id(name):
        raise ModelError(f"{name}: no such file or folder. Check the path.")
    else:
        pipeline = _load_hub(name, dtype, gpu, disable_mmap)
        detected = CheckpointInfo(
            _family_of(pipeline),
            pipeline.scheduler.config.get("prediction_type") == "v_prediction",
            "the scheduler config",
        )
        family, v_pred = _reconcile(name, detected, v2, v_parameterization)
    if vae:
        pipeline.vae = load_vae(vae, family, dtype, disable_mmap)
    pipeline.scheduler = _scheduler_with_prediction(pipeline.scheduler, v_pred)
    loaded = LoadedModel(pipeline=pipeline, family=family, v_parameterization=v_pred, source=name)
    log.info("loaded %s", loaded.describe())
    return loaded


def _reconcile(
    name: str, info: CheckpointInfo, v2: bool, v_parameterization: bool
) -> tuple[str, bool]:
    """Merge what the file says with the user's flags; returns (family, v_parameterization)."""
    if v2 and info.family != "sd2":
        raise ModelError(
            f"{name}: --v2 was given, but this is a {FAMILY_NAMES[info.family]} model. "
            "Remove --v2 (the family is detected from the model)."
        )
    if v_parameterization:
        if info.v_parameterization is False:
            log.warning(
                "%s: %s says epsilon prediction, but --v_parameterization was given; "
                "training with v-prediction as asked.",
                name,
                info.evidence,
            )
        elif info.family == "sd1":
            log.warning("%s: v-prediction on an SD 1.x model is unusual; check the flag.", name)
        return info.family, True
    if info.v_parameterization is None and info.family == "sd2":
        log.warning(
            "%s: this SD 2.x file does not say its prediction type; assuming epsilon "
            "(the 512-px base models). For a 768-v model pass --v_parameterization.",
            name,
        )
    return info.family, bool(info.v_parameterization)


def _family_of(pipeline: Any) -> str:
    if "XL" in type(pipeline).__name__:
        return "sdxl"
    return "sd2" if pipeline.text_encoder.config.hidden_size == 1024 else "sd1"


def _pipeline_class(family: str) -> Any:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import logging as diffusers_logging

    # diffusers ignores the hub's switch for its own bars; follow it as transformers does.
    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "") not in ("", "0"):
        diffusers_logging.disable_progress_bar()
    return StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline


def _no_safety_checker(family: str) -> dict[str, Any]:
    # Training and trying embeddings need no NSFW filter; loading one would also need its weights.
    if family == "sdxl":
        return {}
    return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


def _gpu_device(device: Any) -> str | None:
    """The CUDA device to load weights straight onto (--lowram), or None for RAM."""
    if device is None or getattr(device, "type", str(device)) != "cuda":
        return None
    return str(device)


def _load_folder(
    path: Path, family: str, dtype: Any, gpu: str | None, disable_mmap: bool = False
) -> Any:
    with _as_model_error(path):
        return _pipeline_class(family).from_pretrained(
            str(path),
            local_files_only=True,
            torch_dtype=dtype,
            disable_mmap=disable_mmap,  # diffusers' parts (UNet, VAE); transformers maps its own
            **_no_safety_checker(family),
            **({"device_map": "cuda"} if gpu else {}),  # pipelines take the device type
        )


@contextmanager
def single_file_configs(path: Path, family: str, v_pred: bool) -> Iterator[Path]:
    """The diffusers configs a single file loads with: those of a folder of the same name
    beside the file (how the demo's tiny model loads), else the shipped ones of its family."""
    beside = path.with_suffix("")
    if not (beside / "model_index.json").is_file():
        name = {"sd1": "sd15", "sd2": "sd2-v" if v_pred else "sd2-base", "sdxl": "sdxl-base"}
        yield MODEL_CONFIGS_DIR / name[family]
        return
    # Configs only: given a folder with weights, diffusers would quietly take any part the
    # single file lacks from there, and a broken file would seem to load.
    with tempfile.TemporaryDirectory(prefix="ti-configs-") as target:
        for config in beside.rglob("*.json"):
            destination = Path(target) / config.relative_to(beside)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(config, destination)
        yield Path(target)


def _load_single_file(
    path: Path, family: str, v_pred: bool, dtype: Any, gpu: str | None, disable_mmap: bool = False
) -> Any:
    tokenizers = {"tokenizer": load_tokenizer("!" if family == "sd2" else None)}
    if family == "sdxl":
        tokenizers["tokenizer_2"] = load_tokenizer("!")
    with single_file_configs(path, family, v_pred) as config_dir, _as_model_error(path):
        return _pipeline_class(family).from_single_file(
            str(path),
            config=str(config_dir),
            local_files_only=True,
            torch_dtype=dtype,
            disable_mmap=disable_mmap,
            scheduler=_scheduler_from_config(config_dir),
            **tokenizers,
            **_no_safety_checker(family),
            **({"device": gpu} if gpu else {}),  # passed on to each part it builds
        )


def _scheduler_from_config(config_dir: Path) -> Any:
    import diffusers

    config = read_json(config_dir / "scheduler" / "scheduler_config.json")
    return getattr(diffusers, config["_class_name"]).from_config(config)


def _scheduler_with_prediction(scheduler: Any, v_pred: bool) -> Any:
    prediction_type = "v_prediction" if v_pred else "epsilon"
    if scheduler.config.get("prediction_type") == prediction_type:
        return scheduler
    return type(scheduler).from_config(scheduler.config, prediction_type=prediction_type)


def _load_hub(name: str, dtype: Any, gpu: str | None, disable_mmap: bool = False) -> Any:
    """A hub id: from the local cache, or downloaded when online (the only network path)."""
    from diffusers import DiffusionPipeline

    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    attempts = [True] if offline else [True, False]
    error: Exception | None = None
    for local_files_only in attempts:
        try:
            return DiffusionPipeline.from_pretrained(
                name,
                local_files_only=local_files_only,
                torch_dtype=dtype,
                disable_mmap=disable_mmap,
                safety_checker=None,
                requires_safety_checker=False,
                **({"device_map": "cuda"} if gpu else {}),  # pipelines take the device type
            )
        except Exception as caught:  # noqa: BLE001 - every failure becomes one message below
            error = caught
    raise ModelError(
        f"{name}: not a local file or folder, and not a hub model in the cache"
        + (" (offline: HF_HUB_OFFLINE is set)" if offline else " or reachable online")
        + f". Check the path. ({first_line(error)})"
    )


def load_vae(name: str, family: str, dtype: Any = None, disable_mmap: bool = False) -> Any:
    """A separate VAE: a diffusers folder (with or without vae/) or a single file."""
    from diffusers import AutoencoderKL

    path = Path(name)
    if path.is_dir():
        subfolder = "vae" if (path / "vae" / "config.json").is_file() else None
        with _as_model_error(path):
            return AutoencoderKL.from_pretrained(
                str(path), subfolder=subfolder, local_files_only=True, torch_dtype=dtype,
                disable_mmap=disable_mmap,
            )  # fmt: skip
    if not path.is_file():
        raise ModelError(f"--vae {name}: file or folder not found. Check the path.")
    if path.suffix != ".safetensors":
        _load_pickle_state_dict(path)  # refuses pickles that need more than tensors
    with single_file_configs(Path("-"), family, False) as config_dir, _as_model_error(path):
        return AutoencoderKL.from_single_file(
            str(path),
            config=str(config_dir),
            subfolder="vae",
            local_files_only=True,
            torch_dtype=dtype,
            disable_mmap=disable_mmap,
        )


def _load_pickle_state_dict(path: Path) -> dict[str, Any]:
    """Read a .ckpt/.pt with weights_only=True: tensors and plain data only, no code."""
    if not path.is_file():
        raise ModelError(f"{path}: file not found. Check the path.")
    data = load_weights_only(path, "checkpoint", ModelError)
    state = data.get("state_dict", data) if isinstance(data, dict) else None
    if not isinstance(state, dict):
        raise ModelError(f"{path}: holds no tensors by name; not a model checkpoint.")
    return state


@contextmanager
def _as_model_error(path: Path) -> Iterator[None]:
    """Turn a loader's exception into one ModelError line naming the path."""
    try:
        yield
    except ModelError:
        raise
    except Exception as error:
        raise ModelError(
            f"{path}: cannot load it ({first_line(error)}). The file may be truncated, "
            "or not the kind of model it looks like."
        ) from error
