"""The vendored CLIP tokenizer as transformers loads it (every family's tokenizers are this one)."""

from __future__ import annotations

from typing import Any

from ti_core.models.assets import TOKENIZER_DIR


def load_tokenizer(pad_token: str | None = None) -> Any:
    """The vendored CLIP tokenizer; SD2 and SDXL's second tokenizer pad with "!"."""
    from transformers import CLIPTokenizer

    extra = {"pad_token": pad_token} if pad_token else {}
    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), **extra)
