"""Reading .ckpt/.pt files safely: `weights_only=True` only (tensors and plain data), because a
pickle can run code when loaded and a model or embedding file has no reason to."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from ti_core.errors import TiError


def load_weights_only(
    path: Path, what: str, error: type[TiError], allowed: tuple[type, ...] = ()
) -> Any:
    """torch.load(path) with weights_only=True; every failure becomes one `error` line naming
    the file. `what` names the expected content ("checkpoint", "embedding file"); `allowed`
    adds classes old files need (the original TI code's ParameterDict)."""
    import torch

    try:
        with torch.serialization.safe_globals(list(allowed)):
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as mmap_error:
                if "mmap" not in str(mmap_error):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)  # pre-zip format
    except pickle.UnpicklingError as caught:
        # "Unsupported global": a class or function the file wants to run; anything else
        # (an image, a text file, a torn download) is simply not a torch file.
        if "Unsupported global" in str(caught) or "GLOBAL" in str(caught):
            raise error(
                f"{path}: this pickle holds more than tensors, and loading it could run code, "
                "so it is refused. Convert it to .safetensors with a tool you trust and use that."
            ) from None
        raise error(f"{path}: not a readable {what} (corrupt, or not a torch file).") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as caught:
        raise error(
            f"{path}: not a readable {what} (truncated or corrupt: {first_line(caught)})."
        ) from None


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:300]}" if text else type(error).__name__
