"""Write textual-inversion embeddings that AUTOMATIC1111, ComfyUI, sd-scripts and diffusers load.

Formats (see /shared/FORMATS.md): "kohya" (the default; `emb_params`, or `clip_l` + `clip_g` for
SDXL, with SAI model-spec metadata), "a1111" (A1111's Train-tab `.pt`; for SDXL, which A1111
never trains, the `clip_l` + `clip_g` .safetensors that A1111 reads) and "diffusers" ({token:
(N, D)}; for SDXL two files, NAME and NAME_2, like learned_embeds / learned_embeds_2).
Every file is written atomically; pickles use the zip layout of torch 2.1, which A1111 accepts.
"""

from __future__ import annotations

import base64
import datetime
import io
import logging
import mimetypes
import os
import re
import struct
import time
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from ti_core.atomic import write_bytes_atomic
from ti_core.config.run_config import FIELDS, Config
from ti_core.config.saving_options import METADATA_NAMES
from ti_core.data.spec import parse_resolution
from ti_core.embeddings.files import SDXL_KEYS, SUFFIXES, Embedding, read_embedding
from ti_core.errors import TiError

log = logging.getLogger(__name__)

WRITE_FORMATS = ("kohya", "a1111", "diffusers")
SAVE_MODEL_AS = ("safetensors", "pt", "ckpt", "bin")
PRECISIONS = {"float": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SECOND_ENCODER_SUFFIX = "_2"  # diffusers' SDXL example: learned_embeds.* and learned_embeds_2.*
A1111_TOKEN_ID = 265  # what A1111's Train tab writes in string_to_token; nothing reads it
A1111_SHORT_HASH_LENGTH = 10
SAI_SPEC_VERSION = "1.0.1"  # what sd-scripts' library/sai_model_spec.py writes
SAI_IMPLEMENTATION = "https://github.com/Stability-AI/generative-models"  # sd-scripts, for TI
ARCHITECTURES = {  # modelspec.architecture and resolution per family, as sd-scripts names them
    "sd1": ("stable-diffusion-v1", "512x512"),
    "sd2": ("stable-diffusion-v2-512", "512x512"),
    "sd2-v": ("stable-diffusion-v2-768-v", "768x768"),
    "sdxl": ("stable-diffusion-xl-v1-base", "1024x1024"),
}
# torch >= 2.4 adds these zip records; A1111's safe unpickler refuses any file that has them.
NEW_TORCH_RECORDS = (".format_version", ".storage_alignment")
# A1111 v1.10 modules/safe.py: the only zip entries it lets through.
A1111_ZIP_ENTRY = re.compile(
    r"^([^/]+)/((data/\d+)|version|byteorder|.data/serialization_id|(data\.pkl))$"
)
ZIP_DATA_ALIGNMENT = 64  # torch aligns tensor data so that it can be memory-mapped
ZIP_PADDING_FIELD = 0x4246  # "FB": the extra field torch pads local headers with


def save_embedding(
    path: str | Path,
    vectors: Sequence[Tensor],
    *,
    token_string: str,
    format: str = "kohya",
    save_model_as: str = "safetensors",
    save_precision: str = "float",
    step: int = 0,
    metadata: Mapping[str, str] | None = None,
    base_model_name: str = "",
    base_model_hash: str = "",
    family: str = "",
    v_parameterization: bool = False,
) -> list[Path]:
    """Write `vectors` (one (N, D) tensor per text encoder) as `path` + the format's suffix.

    A `path` ending in .safetensors/.pt/.ckpt/.bin picks that container over `save_model_as`.
    kohya and diffusers use the container asked for; a1111 is always .pt (SDXL: .safetensors).
    `metadata` is added to the safetensors header and wins over the keys made here.
    `family` (sd1 | sd2 | sdxl) defaults to a guess from the widths. Returns the files written.
    """
    if save_precision not in PRECISIONS:
        raise TiError(f"unknown save_precision {save_precision!r}; use float, fp16 or bf16.")
    rows = _prepared(vectors, PRECISIONS[save_precision])
    paths = output_paths(path, format, save_model_as, len(rows))
    name = _base_and_container(Path(path), save_model_as)[0].name  # the trigger word
    family = family or ("sdxl" if len(rows) == 2 else "sd2" if rows[0].shape[1] == 1024 else "sd1")
    header = sai_metadata(name, family, v_parameterization)
    header.update(
        {
            "ti_trainer.token_string": token_string,
            "ti_trainer.num_vectors_per_token": str(rows[0].shape[0]),
            "ti_trainer.step": str(step),
            "ti_trainer.base_model": base_model_name,
            "ti_trainer.base_model_hash": base_model_hash,
        }
    )
    header = {key: str(value) for key, value in {**header, **(metadata or {})}.items() if value}
    if format == "diffusers":
        if not token_string:
            raise TiError("a diffusers embedding needs a token_string: it is the file's only key.")
        header = {"format": "pt", **header}  # what diffusers' training example writes
        return [
            _write_tensors(path, {token_string: row}, header)
            for path, row in zip(paths, rows, strict=True)
        ]
    if format == "a1111" and len(rows) == 1:
        a1111 = {
            "string_to_token": {"*": A1111_TOKEN_ID},
            "string_to_param": {"*": rows[0].float()},  # A1111 always trains and saves fp32
            "name": name,
            "step": step,
            "sd_checkpoint": base_model_hash[:A1111_SHORT_HASH_LENGTH] or None,
            "sd_checkpoint_name": base_model_name or None,
        }
        return [_write_pickle(paths[0], a1111)]
    tensors = dict(zip(SDXL_KEYS, rows, strict=True)) if len(rows) == 2 else {"emb_params": rows[0]}
    return [_write_tensors(paths[0], tensors, header)]


def output_paths(
    path: str | Path, format: str, save_model_as: str = "safetensors", encoders: int = 1
) -> list[Path]:
    """The files `save_embedding` writes for these arguments, in the order it returns them."""
    if format not in WRITE_FORMATS:
        raise TiError(
            f"unknown embedding format {format!r}; use one of {', '.join(WRITE_FORMATS)}."
        )
    base, container = _base_and_container(Path(path), save_model_as)
    if format == "a1111":  # SDXL: A1111 reads sd-scripts' clip_l/clip_g .safetensors
        container = "pt" if encoders == 1 else "safetensors"
    names = [base.name]
    if format == "diffusers" and encoders == 2:
        names.append(base.name + SECOND_ENCODER_SUFFIX)
    # Not with_suffix: a name like "v1.5-style" keeps its dots.
    return [base.with_name(f"{name}.{container}") for name in names]


def sai_metadata(title: str, family: str, v_parameterization: bool) -> dict[str, str]:
    """The SAI model-spec keys sd-scripts writes into a textual-inversion .safetensors."""
    if family not in ("sd1", "sd2", "sdxl"):
        raise TiError(f"unknown model family {family!r}; use sd1, sd2 or sdxl.")
    key = "sd2-v" if family == "sd2" and v_parameterization else family
    architecture, resolution = ARCHITECTURES[key]
    return {
        "modelspec.sai_model_spec": SAI_SPEC_VERSION,
        "modelspec.architecture": f"{architecture}/textual-inversion",
        "modelspec.implementation": SAI_IMPLEMENTATION,
        "modelspec.title": title,
        "modelspec.resolution": resolution,
        "modelspec.prediction_type": "v" if v_parameterization else "epsilon",
        "modelspec.date": datetime.datetime.fromtimestamp(int(time.time())).isoformat(),
        "modelspec.trigger_phrase": title,  # A1111 and ComfyUI trigger on the file name
    }


def run_model_spec(config: Config, title: str) -> dict[str, str]:
    """The modelspec.* keys a run adds to `sai_metadata`, as sd-scripts' get_sai_model_spec
    does: the metadata_* options (the title defaulting to `title`), the training resolution
    when one is set, and the text encoder layer when clip_skip is used. Empty ones are left out
    (so the file name stays the trigger phrase)."""
    saving = config.saving
    spec = {f"modelspec.{name}": getattr(saving, f"metadata_{name}") for name in METADATA_NAMES}
    spec["modelspec.title"] = saving.metadata_title or title
    spec["modelspec.thumbnail"] = _data_url(saving.metadata_thumbnail)
    if config.dataset.resolution != FIELDS["resolution"].default:
        width, height = parse_resolution(config.dataset.resolution)
        spec["modelspec.resolution"] = f"{width}x{height}"
    if config.model.clip_skip > 1:
        spec["modelspec.encoder_layer"] = str(config.model.clip_skip)
    return {key: value for key, value in spec.items() if value}


def _data_url(thumbnail: str) -> str:
    """A thumbnail option as the data: URL the model spec stores ("" when the file is gone)."""
    if not thumbnail or thumbnail.startswith("data:"):
        return thumbnail
    path = Path(thumbnail)
    try:
        data = path.read_bytes()
    except OSError as error:
        log.warning("metadata_thumbnail = %s: not stored (%s)", path, error.strerror or error)
        return ""
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{kind};base64,{base64.b64encode(data).decode('ascii')}"


def convert_embedding(
    in_path: str | Path, to: str, out_path: str | Path | None = None
) -> list[Path]:
    """Rewrite an embedding file of any readable format as `to`; the trigger name (stem) stays.

    A diffusers SDXL pair (NAME + NAME_2) is read together. Without `out_path` the result goes
    next to the input; a folder (existing, or ending in /) keeps the name. Never overwrites the
    input.
    """
    embedding, sources = read_with_second_encoder(in_path)
    out = Path(out_path) if out_path is not None else sources[0].parent / embedding.name
    if out.is_dir() or str(out_path).endswith(("/", os.sep)):
        out = out / embedding.name
    fields = embedding.metadata
    kept = {k: v for k, v in fields.items() if k.startswith(("modelspec.", "ti_trainer."))}
    dtype = embedding.vectors[0].dtype
    precision = next((name for name, kind in PRECISIONS.items() if kind == dtype), "float")
    family = "sdxl" if embedding.is_sdxl else _family_of(fields.get("modelspec.architecture", ""))
    planned = output_paths(out, to, encoders=len(embedding.vectors))
    clash = [path for path in planned if path.resolve() in {p.resolve() for p in sources}]
    if clash:
        raise TiError(
            f"{clash[0]}: converting to {to} would overwrite the input file. "
            "Give an output path (--out) in another folder or with another suffix."
        )
    return save_embedding(
        out,
        embedding.vectors,
        token_string=embedding.token or embedding.name,
        format=to,
        save_precision=precision,
        step=int(fields.get("ti_trainer.step") or fields.get("step") or 0),
        metadata=kept,
        base_model_name=fields.get("ti_trainer.base_model") or fields.get("sd_checkpoint_name", ""),
        base_model_hash=fields.get("ti_trainer.base_model_hash") or fields.get("sd_checkpoint", ""),
        family=family,
        v_parameterization=fields.get("modelspec.prediction_type") == "v",
    )


def read_with_second_encoder(path: str | Path) -> tuple[Embedding, list[Path]]:
    """`read_embedding`, plus the diffusers SDXL layout: NAME.x (CLIP-L) and NAME_2.x (CLIP-G)."""
    path = Path(path)
    stem = path.stem.removesuffix(SECOND_ENCODER_SUFFIX)
    first = path.with_name(stem + path.suffix)
    second = path.with_name(stem + SECOND_ENCODER_SUFFIX + path.suffix)
    if not (first.is_file() and second.is_file() and first != second):
        return read_embedding(path), [path]
    clip_l, clip_g = read_embedding(first), read_embedding(second)
    same_token = clip_l.format == clip_g.format == "diffusers" and clip_l.token == clip_g.token
    if not same_token or clip_l.widths[0] >= clip_g.widths[0]:  # CLIP-G is the wider one
        return read_embedding(path), [path]
    if clip_l.num_vectors != clip_g.num_vectors:
        raise TiError(
            f"{second}: holds {clip_g.num_vectors} vectors but {first.name} holds "
            f"{clip_l.num_vectors}; the two halves of an SDXL embedding must match."
        )
    vectors = [clip_l.vectors[0], clip_g.vectors[0]]
    metadata = {**clip_g.metadata, **clip_l.metadata}
    pair = Embedding(first, stem, "diffusers", vectors, token=clip_l.token, metadata=metadata)
    return pair, [first, second]


def torch_2_1_layout(data: bytes) -> bytes:
    """A torch.save zip without the records A1111 refuses; every record's bytes and order kept."""
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            if info.filename.rpartition("/")[2] in NEW_TORCH_RECORDS:
                continue
            entry = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            entry.external_attr = info.external_attr
            # Pad the local header so the record's data starts 64-byte aligned, as torch does.
            data_start = out.tell() + 30 + len(info.filename.encode()) + 4
            padding = -data_start % ZIP_DATA_ALIGNMENT
            entry.extra = struct.pack("<HH", ZIP_PADDING_FIELD, padding) + b"Z" * padding
            target.writestr(entry, source.read(info))
    return out.getvalue()


def _write_tensors(path: Path, tensors: dict[str, Tensor], header: dict[str, str]) -> Path:
    if path.suffix == ".safetensors":
        from safetensors.torch import save

        return _write_atomically(path, save(tensors, metadata=header))
    return _write_pickle(path, tensors)  # tensors only: A1111 wants exactly one value per dict


def _write_pickle(path: Path, data: dict) -> Path:
    buffer = io.BytesIO()
    torch.save(data, buffer)
    zipped = torch_2_1_layout(buffer.getvalue())
    names = zipfile.ZipFile(io.BytesIO(zipped)).namelist()
    refused = [name for name in names if not A1111_ZIP_ENTRY.match(name)]
    if refused:  # a newer torch's new record: the file still loads everywhere but in A1111
        log.warning("%s: A1111 will refuse zip record %s; use safetensors for A1111", path, refused)
    return _write_atomically(path, zipped)


def _write_atomically(path: Path, data: bytes) -> Path:
    try:
        return write_bytes_atomic(path, data)
    except OSError as error:
        raise TiError(
            f"{path}: cannot write the embedding ({error.strerror or error}). "
            "Check that the folder is writable and the disk has free space."
        ) from None


def _prepared(vectors: Sequence[Tensor], dtype: torch.dtype) -> list[Tensor]:
    """CPU (N, D) copies in `dtype` with their own storage: a view would save the whole table."""
    if len(vectors) not in (1, 2):
        raise TiError(f"an embedding has one tensor per text encoder (1 or 2), not {len(vectors)}.")
    rows = []
    for tensor in vectors:
        tensor = tensor.detach()
        if tensor.dim() == 1:
            # Always 2-D: sd-scripts reads a (D,) tensor as D one-number vectors.
            tensor = tensor.unsqueeze(0)
        if tensor.dim() != 2 or 0 in tensor.shape or not tensor.is_floating_point():
            raise TiError(
                f"cannot save a {tuple(tensor.shape)} {tensor.dtype} tensor as an embedding; "
                "each text encoder's vectors must be a (vectors, width) float tensor."
            )
        rows.append(tensor.to("cpu", dtype).clone(memory_format=torch.contiguous_format))
    if len(rows) == 2 and rows[0].shape[0] != rows[1].shape[0]:
        raise TiError(
            f"the SDXL vectors disagree: {rows[0].shape[0]} for CLIP-L but {rows[1].shape[0]} "
            "for CLIP-G; both text encoders need the same number of vectors."
        )
    return rows


def _base_and_container(path: Path, save_model_as: str) -> tuple[Path, str]:
    if path.suffix.lower() in SUFFIXES:
        return path.with_suffix(""), path.suffix.lower()[1:]
    if save_model_as not in SAVE_MODEL_AS:
        raise TiError(f"unknown save_model_as {save_model_as!r}; use {', '.join(SAVE_MODEL_AS)}.")
    return path, save_model_as


def _family_of(architecture: str) -> str:
    """sd1 | sd2 from a file's modelspec.architecture; "" (guess from the width) when unknown."""
    if architecture.startswith("stable-diffusion-v2"):
        return "sd2"
    return "sd1" if architecture.startswith("stable-diffusion-v1") else ""
