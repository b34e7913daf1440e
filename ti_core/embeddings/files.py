"""Read textual-inversion embedding files: sd-scripts, AUTOMATIC1111, diffusers, original TI code.

Every layout (see /shared/FORMATS.md) becomes one `Embedding`: one (N, D) tensor per text encoder,
in the model's order. Pickles are only read with `weights_only=True`. A file that is something
else (a LoRA, a whole model, not a tensor file at all) is a TiError naming the file and what it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ti_core.errors import TiError
from ti_core.models.safe_pickle import first_line, load_weights_only

FORMATS = ("kohya", "kohya-sdxl", "a1111", "diffusers", "diffusers-1d")
SUFFIXES = (".safetensors", ".pt", ".bin", ".ckpt")
SDXL_KEYS = ("clip_l", "clip_g")  # sd-scripts' SDXL files; A1111 and ComfyUI read the same keys
A1111_FLAT_KEYS = ("*", "string_to_param.*")  # a converted A1111 file, flattened to one tensor
FULL_MODEL_PREFIXES = (
    "model.diffusion_model.",
    "first_stage_model.",
    "cond_stage_model.",
    "conditioner.",
    "model.",
)
MODEL_PART_PREFIXES = ("down_blocks.", "up_blocks.", "mid_block.", "encoder.", "decoder.")
MODEL_PART_PREFIXES += ("text_model.", "unet.", "vae.", "text_encoder.")
EXAMPLE_KEYS_SHOWN = 2


@dataclass
class Embedding:
    """One embedding file, whatever wrote it.

    `vectors` has one tensor per text encoder, each (N, D) in the file's own dtype: one entry
    for SD 1.x / 2.x files, two (clip_l, clip_g) for SDXL files. 1-D vectors are made (1, D).
    """

    path: Path
    name: str  # the trigger word tools use: the file stem
    format: str  # one of FORMATS
    vectors: list[Tensor]
    token: str = ""  # the token a diffusers file names as its key ("" for other formats)
    metadata: dict[str, str] = field(default_factory=dict)  # safetensors header / A1111 fields

    @property
    def num_vectors(self) -> int:
        return int(self.vectors[0].shape[0])

    @property
    def widths(self) -> list[int]:
        return [int(tensor.shape[1]) for tensor in self.vectors]

    @property
    def is_sdxl(self) -> bool:
        return len(self.vectors) == 2


def read_embedding(path: str | Path) -> Embedding:
    """Read an embedding file in any supported format (see FORMATS)."""
    path = Path(path)
    if not path.is_file():
        raise TiError(f"{path}: embedding file not found. Check the path.")
    if path.suffix.lower() == ".safetensors":
        keys, metadata = _safetensors_header(path)
        tensors = _load_safetensors(path, _keys_to_load(path, keys))
    else:
        data = _load_pickle(path)
        if "string_to_param" in data:
            return _a1111(path, data)
        tensors = {key: value for key, value in data.items() if isinstance(value, Tensor)}
        _keys_to_load(path, list(tensors))  # refuses what is not an embedding
        metadata = _plain_fields(data)
    return _from_tensors(path, tensors, metadata)


def _keys_to_load(path: Path, keys: list[str]) -> list[str]:
    """The tensors that make the embedding; anything else is refused with what the file is."""
    if any(key in keys for key in SDXL_KEYS):
        missing = [key for key in SDXL_KEYS if key not in keys]
        if missing:
            raise TiError(
                f"{path}: an SDXL embedding needs both clip_l and clip_g, but {missing[0]} is "
                "missing. Use a complete SDXL embedding file."
            )
        return list(SDXL_KEYS)
    # One tensor named like a layer ("....weight", "lora_...") is a piece of a model, not a token.
    if len(keys) == 1 and not any(mark in keys[0] for mark in (".weight", ".bias", "lora")):
        return keys
    raise TiError(f"{path}: {_what_it_is(keys)}, so it is not a textual-inversion embedding.")


def _from_tensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> Embedding:
    if all(key in tensors for key in SDXL_KEYS):
        vectors = [_as_matrix(path, key, tensors[key]) for key in SDXL_KEYS]
        if vectors[0].shape[0] != vectors[1].shape[0]:
            raise TiError(
                f"{path}: clip_l has {vectors[0].shape[0]} vectors but clip_g has "
                f"{vectors[1].shape[0]}; the file is damaged or not from one training run."
            )
        return Embedding(path, path.stem, "kohya-sdxl", vectors, metadata=metadata)
    ((key, tensor),) = tensors.items()
    if key == "emb_params":
        file_format, token = "kohya", ""
    elif key in A1111_FLAT_KEYS:
        file_format, token = "a1111", ""
    else:
        file_format, token = ("diffusers-1d" if tensor.dim() == 1 else "diffusers"), key
    vectors = [_as_matrix(path, key, tensor)]
    return Embedding(path, path.stem, file_format, vectors, token=token, metadata=metadata)


def _a1111(path: Path, data: dict[str, Any]) -> Embedding:
    """AUTOMATIC1111's layout; the original TI code pickled string_to_param as a ParameterDict."""
    params = data["string_to_param"]
    params = dict(getattr(params, "_parameters", params))
    if len(params) != 1 or not isinstance(next(iter(params.values())), Tensor):
        raise TiError(
            f"{path}: string_to_param holds {len(params)} entries; an A1111 embedding holds "
            "exactly one tensor. The file is not an embedding this tool can read."
        )
    ((key, tensor),) = params.items()
    metadata = _plain_fields(data)
    vectors = [_as_matrix(path, f"string_to_param[{key!r}]", tensor.detach())]
    return Embedding(path, path.stem, "a1111", vectors, metadata=metadata)


def _as_matrix(path: Path, key: str, tensor: Tensor) -> Tensor:
    """(N, D) with its own storage; old diffusers files store one vector as 1-D (D,)."""
    if tensor.dim() == 1:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 2 or 0 in tensor.shape or not tensor.is_floating_point():
        raise TiError(
            f"{path}: {key} is a {tuple(tensor.shape)} {tensor.dtype} tensor; an embedding is "
            "(vectors, width) floats. The file is not an embedding."
        )
    return tensor.detach().contiguous().clone()


def _what_it_is(keys: list[str]) -> str:
    if not keys:
        return "it holds no tensors"
    examples = [repr(key) for key in sorted(keys)[:EXAMPLE_KEYS_SHOWN]]
    if len(keys) > EXAMPLE_KEYS_SHOWN:
        examples.append("...")
    plural = "s" if len(keys) > 1 else ""
    count = f"{len(keys):,} tensor{plural}: {', '.join(examples)}"
    if any("lora" in key.lower() for key in keys):
        return f"this is a LoRA ({count})"
    if any(key.startswith(FULL_MODEL_PREFIXES) for key in keys):
        return f"this is a full model checkpoint ({count})"
    if any(key.startswith(MODEL_PART_PREFIXES) for key in keys):
        return f"this is model weights (a UNet, VAE or text encoder: {count})"
    return f"it holds {count}, where an embedding holds one (or clip_l and clip_g)"


def _plain_fields(data: dict[str, Any]) -> dict[str, str]:
    """A pickle's scalar fields as text (A1111: name, step, sd_checkpoint, sd_checkpoint_name)."""
    fields = {}
    for key, value in data.items():
        if isinstance(value, Tensor) and value.dim() == 0:
            value = value.item()
        if isinstance(value, str | int | float | bool):
            fields[str(key)] = str(value)
    return fields


def _safetensors_header(path: Path) -> tuple[list[str], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return list(handle.keys()), dict(handle.metadata() or {})
    except Exception as error:  # noqa: BLE001 - any failure means an unreadable file
        raise TiError(f"{path}: not a readable .safetensors file ({first_line(error)}).") from None


def _load_safetensors(path: Path, keys: list[str]) -> dict[str, Tensor]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as handle:
        return {key: handle.get_tensor(key) for key in keys}


def _load_pickle(path: Path) -> dict[str, Any]:
    """torch.load with weights_only=True: tensors and plain data (and a ParameterDict) only."""
    data = load_weights_only(path, "embedding file", TiError, (torch.nn.ParameterDict,))
    if not isinstance(data, dict):
        raise TiError(
            f"{path}: holds a {type(data).__name__}, not tensors by name; not an embedding."
        )
    if isinstance(data.get("state_dict"), dict):
        keys = list(data["state_dict"])
        raise TiError(f"{path}: {_what_it_is(keys)}, so it is not a textual-inversion embedding.")
    return data
