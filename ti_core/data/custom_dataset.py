"""dataset_class (sd-scripts' option): the batches come from the user's own Python class instead
of image folders. sd-scripts builds it as Class(tokenizer, max_token_length, resolution,
debug_dataset); so do we. The class must have:

    len(dataset)            the batches of one epoch
    dataset[i]              a dict: "images" float (B, 3, H, W) in [-1, 1] (or "latents",
                            (B, 4, H/8, W/8) straight from the VAE, unscaled), "captions" B
                            strings that use the token string; optional "loss_weights" (B,)
    set_current_epoch(n)    optional; called before each epoch (epochs count from 1)

Captions are tokenized here, with the token string expanded to its vectors' words as for
folder datasets, so the class need not know about the trained tokens (any "input_ids" it
gives are not used). Such a dataset is not checked by the dataset doctor, not held out for
validation and not latent-cached: the class decides what each batch holds.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any

import torch

from ti_core.data.spec import parse_resolution
from ti_core.errors import ConfigError, DatasetError, closest

log = logging.getLogger(__name__)

INTERFACE = (
    "a class built as Class(tokenizer, max_token_length, resolution, debug_dataset) whose "
    "len() is the batches per epoch and whose items are dicts with images (B x 3 x H x W in "
    "[-1, 1]) and captions (B strings)"
)


def load_dataset_class(name: str) -> type:
    """The class `package.module.Class` names, imported; a ConfigError says what is wrong."""
    where = f"[dataset] dataset_class = {name!r}"
    module_name, _, class_name = name.strip().rpartition(".")
    if not module_name or not class_name:
        raise ConfigError(
            f"{where}: expected package.module.Class, e.g. my_datasets.ToyDataset ({INTERFACE})."
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(
            f"{where}: cannot import the module {module_name!r} ({error}). It must be importable "
            "from the folder training starts in or from PYTHONPATH."
        ) from None
    found = getattr(module, class_name, None)
    if found is None:
        names = [
            n for n, v in vars(module).items() if isinstance(v, type) and not n.startswith("_")
        ]
        close = closest(class_name, names)
        hint = f" Did you mean {module_name}.{close}?" if close else ""
        raise ConfigError(f"{where}: the module {module_name!r} has no {class_name!r}.{hint}")
    missing = [m for m in ("__len__", "__getitem__") if not hasattr(found, m)]
    if not isinstance(found, type) or missing:
        what = "not a class" if not isinstance(found, type) else f"lacks {', '.join(missing)}"
        raise ConfigError(f"{where}: {what}; expected {INTERFACE}.")
    return found


def custom_batches(config: Any, model: Any) -> CustomBatches:
    """The run's batches from its dataset_class, built with the run's tokenizer(s) (the new
    tokens already added) as sd-scripts builds it."""
    data = config.dataset
    if data.cache_latents or data.cache_latents_to_disk:
        log.warning("cache_latents: a dataset_class makes its own batches; they are not cached.")
    cls = load_dataset_class(data.dataset_class)
    tokenizer = model.tokenizers[0] if len(model.tokenizers) == 1 else list(model.tokenizers)
    resolution = parse_resolution(data.resolution, "[dataset] resolution")
    try:
        dataset = cls(tokenizer, config.model.max_token_length, resolution, data.debug_dataset)
    except Exception as error:
        raise DatasetError(
            f"dataset_class {data.dataset_class}: building it as Class(tokenizer, "
            f"max_token_length, resolution, debug_dataset) failed: {error}"
        ) from error
    batches = CustomBatches(dataset, model.loaded.pipeline.vae, model.expand, data.dataset_class)
    if len(batches) == 0:
        raise DatasetError(
            f"dataset_class {data.dataset_class}: len() is 0; no batches to train on."
        )
    log.info("dataset_class %s: %d batches per epoch", data.dataset_class, len(batches))
    return batches


class CustomBatches(torch.utils.data.Dataset):
    """The user's dataset as the loop's batches (the dict data/batches.py describes)."""

    def __init__(self, dataset: Any, vae: Any, expand: Callable[[str], str], name: str) -> None:
        self.dataset, self.expand, self.name = dataset, expand, name
        self.latent_scale = (vae.config.get("shift_factor") or 0.0, vae.config.scaling_factor)

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_current_epoch"):
            self.dataset.set_current_epoch(epoch)

    def count_steps(self, accumulation: int, max_train_steps: int, team_size: int = 1) -> None:
        """The loop tells folder batches the step each trains at (token_warmup_step); the
        user's class makes its own captions, so there is nothing to tell it."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        item = self.dataset[index]
        where = f"dataset_class {self.name}, batch {index}"
        if not isinstance(item, dict):
            raise DatasetError(f"{where}: expected a dict, got {type(item).__name__}.")
        batch: dict[str, Any] = {}
        if item.get("latents") is not None:
            shift, scale = self.latent_scale
            images = _tensor(item, "latents", where)
            batch["latents"] = (images.float() - shift) * scale
            height, width = images.shape[2] * 8, images.shape[3] * 8
        else:
            images = _tensor(item, "images", where)
            batch["pixels"] = images.float()
            height, width = images.shape[2], images.shape[3]
        size = images.shape[0]
        captions = item.get("captions")
        if (
            not isinstance(captions, (list, tuple))
            or len(captions) != size
            or not all(isinstance(caption, str) for caption in captions)
        ):
            raise DatasetError(f"{where}: expected captions, a list of {size} strings.")
        weights = item.get("loss_weights")
        weights = torch.ones(size) if weights is None else torch.as_tensor(weights).float()
        if tuple(weights.shape) != (size,):
            raise DatasetError(f"{where}: loss_weights must hold {size} values.")
        sizes = torch.tensor([[height, width]] * size, dtype=torch.long)
        batch.update(
            captions=[self.expand(caption) for caption in captions],
            paths=[f"{self.name}[{index}][{slot}]" for slot in range(size)],
            is_reg=torch.zeros(size, dtype=torch.bool),
            loss_weights=weights,
            flipped=[False] * size,
            original_size=sizes,
            crop_top_left=torch.zeros(size, 2, dtype=torch.long),
            target_size=sizes.clone(),
            bucket=(width, height),
        )
        return batch


def _tensor(item: dict[str, Any], key: str, where: str) -> torch.Tensor:
    value = item.get(key)
    if not isinstance(value, torch.Tensor) or value.dim() != 4:
        shape = "B x 3 x H x W" if key == "images" else "B x 4 x H/8 x W/8"
        raise DatasetError(f"{where}: expected {key}, a float tensor of shape {shape}.")
    return value
