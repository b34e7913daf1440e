"""An epoch of training batches, made as sd-scripts makes them: repeats expand the images,
each bucket is shuffled and cut into batches (a batch never mixes buckets), the batches are
shuffled, all from a seed. An item is read from disk, resized and cropped into its bucket,
colour-augmented and flipped as its subset says, or taken from the latent cache.

A batch is a dict:
    pixels         float32 (B, 3, H, W) in [-1, 1]; or, drawn from a latent cache:
    latents        float32 (B, C, H/8, W/8), already multiplied by the VAE's scaling factor
    captions       list[str], from the caller's make_caption(entry, epoch, rng), which also
                   gets step= and max_train_steps= once count_steps was called
    paths          list[str]
    is_reg         bool (B,)
    loss_weights   float32 (B,): prior_loss_weight for regularization images, else 1.0
    flipped        list[bool]
    original_size  int64 (B, 2): (height, width) of the image file, upright
    crop_top_left  int64 (B, 2): (top, left), the crop condition sd-scripts gives SDXL
    target_size    int64 (B, 2): (height, width) of the bucket
    bucket         (width, height)
    loss_masks     float32 (B, H, W) in [0, 1], each pixel's loss weight; only when a subset
                   has masks (alpha_mask, conditioning_data_dir), 1 for the images without
The three size fields are in the order SDXL's add_time_ids wants; sdxl_time_ids() joins them.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ti_core.data.buckets import (
    BucketRules,
    Size,
    sdxl_crop_ltrb,
    sdxl_crop_top_left,
)
from ti_core.data.images import image_size
from ti_core.data.pixels import TrainImage, load_pixels_and_mask
from ti_core.data.sources import face_box
from ti_core.data.spec import DatasetSpec, ImageEntry
from ti_core.errors import DatasetError

if TYPE_CHECKING:
    from ti_core.data.latents import LatentCache

log = logging.getLogger(__name__)

MakeCaption = Callable[..., str]  # (entry, epoch, rng[, step=, max_train_steps=]) -> caption


def prepare_images(entries: Sequence[ImageEntry], spec: DatasetSpec) -> list[TrainImage]:
    """Size, bucket and repeat count of every image of one dataset ([[datasets]] entry).

    Images that get no repeats (num_repeats < 1, or regularization images beyond what the
    training images need) are left out, as sd-scripts leaves them out.
    """
    rules = BucketRules(spec)
    images = []
    for entry, repeats in zip(entries, balanced_repeats(entries), strict=True):
        if repeats < 1:
            continue
        size = entry.size or image_size(entry.path)
        choice = rules.choose(size, source=str(entry.path))
        # sd-scripts crops around the face only without buckets (discover_images warns)
        crops_face = entry.subset.face_crop_aug_range and not spec.enable_bucket
        face = face_box(entry.path) if crops_face else None
        images.append(TrainImage(entry, size, choice.bucket, choice.resized_size, repeats, face))
    return images


def balanced_repeats(entries: Sequence[ImageEntry]) -> list[int]:
    """Repeats per image as sd-scripts' DreamBoothDataset counts them.

    Training images repeat num_repeats times. Regularization images are then taken in order
    until they add up to as many as the training images (with their repeats): the first pass
    gives each its own num_repeats, later passes one more each, and the rest get none.
    """
    used_subset = [entry.subset.num_repeats >= 1 for entry in entries]  # else sd-scripts skips it
    repeats = [
        entry.subset.num_repeats if used and not entry.subset.is_reg else 0
        for entry, used in zip(entries, used_subset, strict=True)
    ]
    train_total = sum(repeats)
    regs = [i for i, entry in enumerate(entries) if entry.subset.is_reg and used_subset[i]]
    if not regs:
        return repeats
    reg_total = sum(entries[i].subset.num_repeats for i in regs)
    if train_total < reg_total:
        log.warning(
            "some of the regularization images are not used (more than the training images)"
        )
    used, first_pass = 0, True
    while used < train_total:
        for i in regs:
            added = entries[i].subset.num_repeats if first_pass else 1
            repeats[i] += added
            used += added
            if used >= train_total:
                break
        first_pass = False
    return repeats


def plan_epoch(
    images: Sequence[TrainImage], batch_size: int, rng: random.Random
) -> list[list[int]]:
    """One epoch's batches of one dataset, as indices into `images`: each bucket's images
    (repeats included) shuffled and cut into batches of batch_size (the last may be short)."""
    by_bucket: dict[Size, list[int]] = {}
    for index, image in enumerate(images):
        by_bucket.setdefault(image.bucket, []).extend([index] * image.repeats)
    batches = []
    for bucket in sorted(by_bucket):
        members = by_bucket[bucket]
        rng.shuffle(members)
        batches += [
            members[start : start + batch_size] for start in range(0, len(members), batch_size)
        ]
    return batches


class EpochBatches(torch.utils.data.Dataset):
    """The batches of an epoch: `batches[i]` is the i-th batch dict, `len(batches)` how many.

    Call set_epoch(n) before each epoch (epochs count from 1, as in sd-scripts): it reshuffles.
    Everything random (order, flips, crops, colour, captions) follows from (seed, epoch, batch,
    slot), so a batch is the same however many loader workers make it.
    """

    def __init__(
        self,
        datasets: Sequence[tuple[DatasetSpec, Sequence[TrainImage]]],
        make_caption: MakeCaption,
        *,
        seed: int = 0,
        prior_loss_weight: float = 1.0,
        latent_cache: LatentCache | None = None,
    ) -> None:
        self.datasets = [(spec, list(images)) for spec, images in datasets]
        self.make_caption = make_caption
        self.seed = seed
        self.prior_loss_weight = prior_loss_weight
        self.latent_cache = latent_cache
        for spec, _ in self.datasets:
            if spec.batch_size < 1:
                raise DatasetError(f"{spec.where or 'dataset'}: batch_size must be 1 or more.")
        self.epoch = 0
        self._plan: list[tuple[int, list[int]]] = []  # (dataset index, image indices) per batch
        self._steps: tuple[int, int, int] | None = None  # see count_steps
        self.set_epoch(1)
        if not self._plan:
            raise DatasetError(
                "No images to train on: every subset is empty or has num_repeats below 1. "
                "Check the dataset folders and their repeat counts."
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        order = random.Random(f"{self.seed}/{epoch}/order")
        self._plan = []
        for dataset_index, (spec, images) in enumerate(self.datasets):
            batches = plan_epoch(images, spec.batch_size, order)
            self._plan += [(dataset_index, batch) for batch in batches]
        order.shuffle(self._plan)

    def count_steps(self, accumulation: int, max_train_steps: int, team_size: int = 1) -> None:
        """Let the captions know the optimizer step each batch trains at (token_warmup_step):
        `accumulation` batches make a step, each of `team_size` processes takes every
        team_size-th batch (as ShareOfBatches deals them), `max_train_steps` in all."""
        self._steps = (max(1, accumulation), max(1, team_size), max_train_steps)

    def step_of(self, index: int) -> int | None:
        """The optimizer steps done before batch `index` of this epoch trains (None: unknown)."""
        if self._steps is None:
            return None
        accumulation, team_size, _ = self._steps
        steps_per_epoch = max(1, math.ceil(len(self) // team_size / accumulation))
        return (self.epoch - 1) * steps_per_epoch + index // team_size // accumulation

    def __len__(self) -> int:
        return len(self._plan)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self[index] for index in range(len(self)))

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self._plan):
            raise IndexError(index)
        dataset_index, members = self._plan[index]
        images = self.datasets[dataset_index][1]
        step = self.step_of(index)
        when = {} if self._steps is None else {"step": step, "max_train_steps": self._steps[2]}
        items = []
        for slot, image_index in enumerate(members):
            key = f"{self.seed}/{self.epoch}/{index}/{slot}"
            image = images[image_index]
            item = self._load_item(image, random.Random(key + "/image"))
            caption_rng = random.Random(key + "/caption")
            item["caption"] = self.make_caption(image.entry, self.epoch, caption_rng, **when)
            items.append(item)
        return self._collate(items, images[members[0]].bucket)

    def _load_item(self, image: TrainImage, rng: random.Random) -> dict[str, Any]:
        subset = image.subset
        flipped = subset.flip_aug and rng.random() < 0.5  # drawn first, as in sd-scripts
        if self.latent_cache is not None:
            latents, original_size, crop_ltrb, mask = self.latent_cache.get_with_mask(
                image, flipped
            )
            item: dict[str, Any] = {"latents": latents}
        else:
            pixels, mask, original_size = load_pixels_and_mask(image, flipped, rng)
            crop_ltrb = sdxl_crop_ltrb(image.bucket, original_size)
            item = {"pixels": pixels}
        item["loss_mask"] = mask
        weight = self.prior_loss_weight if subset.is_reg else 1.0
        item.update(
            path=str(image.path),
            is_reg=subset.is_reg,
            loss_weight=weight,
            flipped=flipped,
            original_size=(original_size[1], original_size[0]),
            crop_top_left=sdxl_crop_top_left(crop_ltrb, image.bucket, flipped),
            target_size=(image.bucket[1], image.bucket[0]),
        )
        return item

    @staticmethod
    def _collate(items: list[dict[str, Any]], bucket: Size) -> dict[str, Any]:
        batch: dict[str, Any] = {}
        if "latents" in items[0]:
            batch["latents"] = torch.stack([item["latents"] for item in items])
        else:
            batch["pixels"] = torch.stack([item["pixels"] for item in items])
        batch["captions"] = [item["caption"] for item in items]
        batch["paths"] = [item["path"] for item in items]
        batch["is_reg"] = torch.tensor([item["is_reg"] for item in items], dtype=torch.bool)
        batch["loss_weights"] = torch.tensor([item["loss_weight"] for item in items])
        batch["flipped"] = [item["flipped"] for item in items]
        for name in ("original_size", "crop_top_left", "target_size"):
            batch[name] = torch.tensor([item[name] for item in items], dtype=torch.long)
        batch["bucket"] = bucket
        if any(item["loss_mask"] is not None for item in items):
            full = np.full((bucket[1], bucket[0]), 255, dtype=np.uint8)
            masks = [full if item["loss_mask"] is None else item["loss_mask"] for item in items]
            batch["loss_masks"] = torch.from_numpy(np.stack(masks)).float() / 255.0
        return batch


def sdxl_time_ids(batch: dict[str, Any]) -> torch.Tensor:
    """SDXL's add_time_ids for a batch: (B, 6) = original size, crop top-left, target size."""
    parts = (batch["original_size"], batch["crop_top_left"], batch["target_size"])
    return torch.cat(parts, dim=1).float()


def make_loader(
    batches: EpochBatches,
    num_workers: int = 0,
    pin_memory: bool = False,
    indices: Sequence[int] | None = None,
) -> torch.utils.data.DataLoader:
    """A DataLoader over whole batches (max_data_loader_n_workers = num_workers).

    With workers, each epoch's iterator copies `batches` into the worker processes, so call
    batches.set_epoch(n) before iterating the loader for epoch n; make_caption must then be
    picklable (a module-level function or functools.partial) where processes are spawned
    (Windows, macOS). `indices` limits the epoch to those batches (a resumed epoch).
    """
    source = batches if indices is None else torch.utils.data.Subset(batches, list(indices))
    return torch.utils.data.DataLoader(
        source,
        batch_size=None,  # the dataset already returns whole batches
        shuffle=False,  # and in its own seeded order
        collate_fn=_as_made,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
    )


class BatchLoader:
    """An epoch's batches from batch `first` on, as (index, batch): made in this process, or
    read and resized ahead in `num_workers` others (max_data_loader_n_workers). `persistent`
    (persistent_data_loader_workers) keeps the same worker processes for every epoch instead
    of starting new ones each epoch. Either way a batch is the same as made here."""

    def __init__(self, batches: Any, num_workers: int = 0, persistent: bool = False) -> None:
        self.batches = batches
        self._keys = _EpochKeys()
        self.loader = None
        if num_workers:
            self.loader = torch.utils.data.DataLoader(
                _ByEpoch(batches),
                batch_size=None,  # the dataset already returns whole batches
                sampler=self._keys,  # in its own seeded order
                collate_fn=_as_made,
                num_workers=num_workers,
                persistent_workers=persistent,
            )

    def epoch(self, epoch: int, first: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
        """Epoch `epoch`'s batches; call batches.set_epoch(epoch) first."""
        indices = range(first, len(self.batches))
        if self.loader is None:
            return ((index, self.batches[index]) for index in indices)
        self._keys.keys = [(epoch, index) for index in indices]
        return zip(indices, self.loader, strict=True)


class _EpochKeys(torch.utils.data.Sampler):
    """The (epoch, batch index) keys the workers are asked for, in order."""

    def __init__(self) -> None:
        self.keys: list[tuple[int, int]] = []

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(list(self.keys))

    def __len__(self) -> int:
        return len(self.keys)


class _ByEpoch(torch.utils.data.Dataset):
    """The batches by (epoch, index). A worker holds its own copy of the batches; one that
    outlives its epoch (persistent workers) plans the next epoch itself, from the seed."""

    def __init__(self, batches: Any) -> None:
        self.batches, self.epoch = batches, None

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, index = key
        if epoch != self.epoch:
            self.batches.set_epoch(epoch)
            self.epoch = epoch
        return self.batches[index]

    def __len__(self) -> int:
        return len(self.batches)


def _as_made(batch: dict[str, Any]) -> dict[str, Any]:
    """The loader's collate step: the batch is already made (torch's default would turn the
    bucket tuple into a list)."""
    return batch
