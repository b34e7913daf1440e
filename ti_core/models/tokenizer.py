"""The vendored CLIP tokenizer as transformers loads it (every family's tokenizers are this one),
or the copy in a tokenizer_cache_dir, which sd-scripts reads and fills the same way.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ti_core.errors import ModelError
from ti_core.models.assets import TOKENIZER_DIR

log = logging.getLogger(__name__)

# sd-scripts' folder names in a tokenizer_cache_dir (the hub id, "/" as "_"): SD 1.x and SDXL's
# first tokenizer; those padding with "!": SD 2.x's, then SDXL's second.
PLAIN_NAMES = ("openai_clip-vit-large-patch14",)
BANG_PAD_NAMES = ("stabilityai_stable-diffusion-2", "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k")

_cache_dir: Path | None = None  # set by tokenizer_cache() while a model loads
_cache_used = False


@contextmanager
def tokenizer_cache(folder: str | Path) -> Iterator[None]:
    """While inside, load_tokenizer reads the tokenizer from `folder` (sd-scripts'
    --tokenizer_cache_dir), or saves the vendored one there when it holds none. A model that
    brings its own tokenizer (a diffusers folder) uses none: that is said once, at the end.
    An empty `folder` changes nothing."""
    global _cache_dir, _cache_used
    if not folder:
        yield
        return
    _cache_dir, _cache_used = Path(folder), False
    try:
        yield
        if not _cache_used:
            log.warning(
                "tokenizer_cache_dir %s is not used: the model brings its own tokenizer "
                "(only a single-file model loads the shared one).",
                folder,
            )
    finally:
        _cache_dir = None


def load_tokenizer(pad_token: str | None = None) -> Any:
    """The CLIP tokenizer; SD2 and SDXL's second tokenizer pad with "!"."""
    from transformers import CLIPTokenizer

    global _cache_used
    extra = {"pad_token": pad_token} if pad_token else {}
    if _cache_dir is None:
        return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), **extra)
    _cache_used = True
    names = BANG_PAD_NAMES if pad_token else PLAIN_NAMES
    for name in names:
        folder = _cache_dir / name
        if folder.is_dir() and any(folder.iterdir()):  # sd-scripts: the folder is there
            log.info("tokenizer from the cache %s", folder)
            try:
                return CLIPTokenizer.from_pretrained(str(folder), **extra)
            except Exception as error:  # noqa: BLE001 - transformers raises many kinds
                raise ModelError(
                    f"{folder}: cannot read the tokenizer in tokenizer_cache_dir ({error}). "
                    "Delete the folder (it is written again) or fix it."
                ) from None
    for name in names:  # sd-scripts looks for the one its model family wants
        try:
            _write_tokenizer(_cache_dir / name, pad_token)
        except OSError as error:
            log.warning("tokenizer_cache_dir: cannot save the tokenizer to %s (%s).",
                        _cache_dir / name, error.strerror or error)  # fmt: skip
            break
    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), **extra)


def _write_tokenizer(folder: Path, pad_token: str | None) -> None:
    """The shipped tokenizer's files (vocab.json, merges.txt: any transformers version reads
    them), with its pad token, into `folder` whole: written beside it, then renamed."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        for name in ("vocab.json", "merges.txt", "LICENSE"):
            shutil.copyfile(TOKENIZER_DIR / name, staging / name)
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            settings = json.loads((TOKENIZER_DIR / name).read_text(encoding="utf-8"))
            settings["pad_token"] = pad_token or settings["pad_token"]
            (staging / name).write_text(json.dumps(settings, indent=2), encoding="utf-8")
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
