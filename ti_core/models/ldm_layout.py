"""Rename diffusers-format weights into the original single-file checkpoint layout, and save it.

Real .safetensors/.ckpt checkpoints keep the tensor names of the original LDM / SGM code
(`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.*`, `conditioner.*`);
this module writes that layout so a demo model can be saved as one file any loader reads.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

FAMILIES = ("sd1", "sd2", "sdxl")

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_TEXT_PREFIX = "cond_stage_model.transformer."
SD2_TEXT_PREFIX = "cond_stage_model.model."
SDXL_TEXT_PREFIX = "conditioner.embedders.0.transformer."
SDXL_TEXT_2_PREFIX = "conditioner.embedders.1.model."

# UNet modules outside the down/mid/up blocks (parameter suffix .weight/.bias kept as is).
UNET_TOP_LEVEL = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",  # SDXL's size/crop conditioning
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
# Inside a UNet resnet the original code numbers the layers of two nn.Sequential blocks.
UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
VAE_TOP_LEVEL = {
    "encoder.conv_in": "encoder.conv_in",
    "encoder.conv_norm_out": "encoder.norm_out",
    "encoder.conv_out": "encoder.conv_out",
    "decoder.conv_in": "decoder.conv_in",
    "decoder.conv_norm_out": "decoder.norm_out",
    "decoder.conv_out": "decoder.conv_out",
    "quant_conv": "quant_conv",
    "post_quant_conv": "post_quant_conv",
}
VAE_MID_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


def to_single_file_state_dict(
    family: str,
    unet_sd: dict[str, Tensor],
    vae_sd: dict[str, Tensor],
    text_encoder_sd: dict[str, Tensor],
    text_encoder_2_sd: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """One state dict in the layout of a real SD1 / SD2 / SDXL single-file checkpoint.

    Inputs are diffusers/transformers state dicts (`model.state_dict()`). For SDXL,
    `text_encoder_sd` is CLIP ViT-L and `text_encoder_2_sd` is OpenCLIP bigG with its
    projection. For SD2, `text_encoder_sd` may hold more layers than diffusers' SD2 text
    encoder (real SD2 files keep OpenCLIP's last layer, which SD2 does not use).
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if (family == "sdxl") != (text_encoder_2_sd is not None):
        raise ValueError("text_encoder_2_sd is needed for sdxl and only for sdxl")

    checkpoint = {}
    checkpoint.update(_with_prefix(UNET_PREFIX, unet_to_ldm(unet_sd)))
    checkpoint.update(_with_prefix(VAE_PREFIX, vae_to_ldm(vae_sd)))
    if family == "sd1":
        checkpoint.update(_with_prefix(SD1_TEXT_PREFIX, clip_to_ldm(text_encoder_sd)))
    elif family == "sd2":
        checkpoint.update(_with_prefix(SD2_TEXT_PREFIX, clip_to_open_clip(text_encoder_sd)))
    else:
        checkpoint.update(_with_prefix(SDXL_TEXT_PREFIX, clip_to_ldm(text_encoder_sd)))
        checkpoint.update(_with_prefix(SDXL_TEXT_2_PREFIX, clip_to_open_clip(text_encoder_2_sd)))
    # safetensors refuses tensors that share memory or are views into bigger ones.
    return {name: tensor.detach().contiguous().clone() for name, tensor in checkpoint.items()}


def save_single_file(path: Path, state_dict: dict[str, Tensor], metadata: dict[str, str]) -> None:
    """Write a .safetensors file whose bytes depend only on its contents.

    The safetensors writer stores `__metadata__` in hash-map order, which changes from run
    to run; rewriting the JSON header with sorted metadata keeps tensor data and offsets.
    """
    data = safetensors_bytes(state_dict, metadata=metadata)
    (header_length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_length])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    new_header = json.dumps(header, separators=(",", ":")).encode("utf-8")
    new_header += b" " * (-len(new_header) % 8)  # tensor data must start 8-byte aligned
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(new_header)))
        file.write(new_header)
        file.write(memoryview(data)[8 + header_length :])


# --- UNet -------------------------------------------------------------------------------


def unet_to_ldm(unet_sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """UNet2DConditionModel names -> `input_blocks` / `middle_block` / `output_blocks`.

    The original UNet is a flat list of blocks: input block 0 is conv_in, then each down
    level has `layers_per_block` (resnet, attention) pairs and one downsampler; each up
    level has `layers_per_block + 1` pairs, its upsampler sitting after the last pair.
    """
    layers_per_block = _count_indices(unet_sd, "down_blocks.0.resnets.")
    up_levels_with_attention = {
        int(key.split(".")[1])
        for key in unet_sd
        if key.startswith("up_blocks.") and ".attentions." in key
    }
    return {
        unet_key_to_ldm(key, layers_per_block, up_levels_with_attention): tensor
        for key, tensor in unet_sd.items()
    }


def unet_key_to_ldm(key: str, layers_per_block: int, up_levels_with_attention: set[int]) -> str:
    module, param = key.rsplit(".", 1)
    if module in UNET_TOP_LEVEL:
        return f"{UNET_TOP_LEVEL[module]}.{param}"

    parts = key.split(".")
    if parts[0] == "down_blocks":
        level, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        first = 1 + level * (layers_per_block + 1)
        if kind == "resnets":
            return f"input_blocks.{first + index}.0.{_unet_resnet_name(rest, key)}"
        if kind == "attentions":
            return f"input_blocks.{first + index}.1.{rest}"
        if kind == "downsamplers" and rest.startswith("conv."):
            return f"input_blocks.{first + layers_per_block}.0.op.{param}"

    if parts[0] == "mid_block":
        kind, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        if kind == "resnets":
            # resnet 0, attention, resnet 1
            return f"middle_block.{2 * index}.{_unet_resnet_name(rest, key)}"
        if kind == "attentions" and index == 0:
            return f"middle_block.1.{rest}"

    if parts[0] == "up_blocks":
        level, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        first = level * (layers_per_block + 1)
        if kind == "resnets":
            return f"output_blocks.{first + index}.0.{_unet_resnet_name(rest, key)}"
        if kind == "attentions":
            return f"output_blocks.{first + index}.1.{rest}"
        if kind == "upsamplers" and rest.startswith("conv."):
            # The upsampler follows the last pair: after its attention when the level has one.
            position = 2 if level in up_levels_with_attention else 1
            return f"output_blocks.{first + layers_per_block}.{position}.conv.{param}"

    raise ValueError(f"no original-layout name for UNet weight {key!r}")


def _unet_resnet_name(rest: str, full_key: str) -> str:
    layer, param = rest.rsplit(".", 1)
    if layer not in UNET_RESNET:
        raise ValueError(f"no original-layout name for UNet weight {full_key!r}")
    return f"{UNET_RESNET[layer]}.{param}"


# --- VAE --------------------------------------------------------------------------------


def vae_to_ldm(vae_sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """AutoencoderKL names -> `encoder.down.N` / `decoder.up.N` / `mid.block_1` ...

    The original decoder numbers its up levels from the lowest resolution's opposite end:
    diffusers' decoder.up_blocks.0 (applied first, smallest image) is decoder.up.{last}.
    The mid-block attention is written with 1x1 convolutions, so its linear weights
    become (out, in, 1, 1).
    """
    num_up_levels = _count_indices(vae_sd, "decoder.up_blocks.")
    converted = {}
    for key, tensor in vae_sd.items():
        new_key = vae_key_to_ldm(key, num_up_levels)
        if ".mid.attn_1." in new_key and new_key.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]
        converted[new_key] = tensor
    return converted


def vae_key_to_ldm(key: str, num_up_levels: int) -> str:
    module, param = key.rsplit(".", 1)
    if module in VAE_TOP_LEVEL:
        return f"{VAE_TOP_LEVEL[module]}.{param}"

    parts = key.split(".")
    coder = parts[0]  # "encoder" or "decoder"
    if coder == "encoder" and parts[1] == "down_blocks":
        level, kind, rest = int(parts[2]), parts[3], ".".join(parts[4:])
        if kind == "resnets":
            return f"encoder.down.{level}.block.{_vae_resnet_name(rest)}"
        if kind == "downsamplers" and rest.startswith("0.conv."):
            return f"encoder.down.{level}.downsample.conv.{param}"

    if coder == "decoder" and parts[1] == "up_blocks":
        level, kind, rest = int(parts[2]), parts[3], ".".join(parts[4:])
        original_level = num_up_levels - 1 - level
        if kind == "resnets":
            return f"decoder.up.{original_level}.block.{_vae_resnet_name(rest)}"
        if kind == "upsamplers" and rest.startswith("0.conv."):
            return f"decoder.up.{original_level}.upsample.conv.{param}"

    if coder in ("encoder", "decoder") and parts[1] == "mid_block":
        kind, index, rest = parts[2], int(parts[3]), ".".join(parts[4:])
        if kind == "resnets":
            return f"{coder}.mid.block_{index + 1}.{_vae_resnet_name(rest)}"
        if kind == "attentions" and index == 0:
            layer = rest.rsplit(".", 1)[0]
            if layer in VAE_MID_ATTENTION:
                return f"{coder}.mid.attn_1.{VAE_MID_ATTENTION[layer]}.{param}"

    raise ValueError(f"no original-layout name for VAE weight {key!r}")


def _vae_resnet_name(rest: str) -> str:
    # "<index>.<layer>.<param>"; only the shortcut is named differently.
    return rest.replace("conv_shortcut", "nin_shortcut")


# --- Text encoders ----------------------------------------------------------------------


def clip_to_ldm(text_encoder_sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """transformers CLIPTextModel names, as the original checkpoints store them.

    SD1 and SDXL's first encoder keep Hugging Face's names under `text_model.`;
    transformers >= 5.6 leaves that prefix out of CLIPTextModel's own state dict.
    """
    return {_with_text_model_prefix(key): tensor for key, tensor in text_encoder_sd.items()}


def clip_to_open_clip(text_encoder_sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """transformers CLIP text encoder -> OpenCLIP's text tower names (SD2, SDXL bigG).

    OpenCLIP stores q, k and v as one `in_proj` matrix, and its text projection as the
    matrix the pooled output is multiplied by, i.e. the transpose of nn.Linear's weight.
    """
    remaining = {_with_text_model_prefix(key): tensor for key, tensor in text_encoder_sd.items()}

    def take(key: str) -> Tensor:
        return remaining.pop(key)

    converted = {
        "token_embedding.weight": take("text_model.embeddings.token_embedding.weight"),
        "positional_embedding": take("text_model.embeddings.position_embedding.weight"),
    }
    for index in range(_count_indices(remaining, "text_model.encoder.layers.")):
        layer = f"text_model.encoder.layers.{index}."
        block = f"transformer.resblocks.{index}."
        for param in ("weight", "bias"):
            converted[block + f"attn.in_proj_{param}"] = torch.cat(
                [take(layer + f"self_attn.{name}_proj.{param}") for name in ("q", "k", "v")]
            )
            converted[block + f"attn.out_proj.{param}"] = take(
                layer + f"self_attn.out_proj.{param}"
            )
            converted[block + f"ln_1.{param}"] = take(layer + f"layer_norm1.{param}")
            converted[block + f"ln_2.{param}"] = take(layer + f"layer_norm2.{param}")
            converted[block + f"mlp.c_fc.{param}"] = take(layer + f"mlp.fc1.{param}")
            converted[block + f"mlp.c_proj.{param}"] = take(layer + f"mlp.fc2.{param}")
    converted["ln_final.weight"] = take("text_model.final_layer_norm.weight")
    converted["ln_final.bias"] = take("text_model.final_layer_norm.bias")
    if "text_projection.weight" in remaining:
        converted["text_projection"] = take("text_projection.weight").T
    remaining.pop("text_model.embeddings.position_ids", None)  # a buffer, not a weight
    if remaining:
        raise ValueError(f"no OpenCLIP name for text encoder weights {sorted(remaining)}")
    return converted


def _with_text_model_prefix(key: str) -> str:
    if key.startswith("text_model.") or key == "text_projection.weight":
        return key
    return "text_model." + key


# --- Helpers ----------------------------------------------------------------------------


def _with_prefix(prefix: str, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    return {prefix + key: tensor for key, tensor in state_dict.items()}


def _count_indices(state_dict: dict[str, Tensor], prefix: str) -> int:
    """How many numbered children `<prefix>0.`, `<prefix>1.`, ... the state dict has."""
    indices = {
        int(key[len(prefix) :].split(".")[0]) for key in state_dict if key.startswith(prefix)
    }
    if indices != set(range(len(indices))):
        raise ValueError(f"weights under {prefix!r} are not numbered 0..n-1: {sorted(indices)}")
    return len(indices)
