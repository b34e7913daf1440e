"""The validation loss: the denoising loss of the current vectors on fixed images, fixed noise and
fixed timesteps spread evenly over the schedule, so two measurements of the same vectors give the
same number and a change means the embedding changed (a training step's loss mostly says which
timestep it drew).

The images are held out of training when the dataset's validation_split is above 0 (sd-scripts'
option), else a fixed few of the training images. Their latents are encoded once, before the VAE
leaves the device, and kept on the CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
from dataclasses import dataclass
from typing import Any

import torch

from ti_core.config.run_config import Config
from ti_core.data.batches import EpochBatches, sdxl_time_ids
from ti_core.data.latents import scale_latents
from ti_core.data.pixels import TrainImage
from ti_core.data.spec import DatasetSpec
from ti_core.embeddings.text_encoding import encode
from ti_core.embeddings.tokens import tokenize_captions
from ti_core.training.diffusion import prediction_target
from ti_core.training.losses import apply_loss_masks

log = logging.getLogger(__name__)

TIMESTEPS_PER_IMAGE = 4  # spread evenly: 125, 375, 625, 875 of 1000
FROM_TRAINING = 8  # images measured when none are held out


@dataclass
class ValidationSet:
    batches: list[dict[str, Any]]  # latents (CPU, scaled), captions, SDXL size fields
    noise: list[torch.Tensor]  # per batch: (timesteps, B, C, H, W), drawn once
    timesteps: list[int]
    held_out: int  # images kept out of training (0: measured on training images)

    @property
    def images(self) -> int:
        return sum(len(batch["captions"]) for batch in self.batches)


def is_on(config: Config) -> bool:
    t = config.training
    return bool(t.validate_every_n_steps or t.validate_every_n_epochs)


def validation_seed(spec: DatasetSpec, config: Config) -> int:
    return config.training.seed if spec.validation_seed < 0 else spec.validation_seed


def hold_out(
    datasets: list[tuple[DatasetSpec, list[TrainImage]]], config: Config
) -> tuple[list[tuple[DatasetSpec, list[TrainImage]]], list[tuple[DatasetSpec, list[TrainImage]]]]:
    """(training datasets, validation datasets). A dataset with validation_split > 0 gives that
    share of its training images (not regularization ones) to validation only, chosen by its
    validation_seed; without any, a fixed few training images are measured (and still train)."""
    training, validation = [], []
    for spec, images in datasets:
        candidates = [i for i, image in enumerate(images) if not image.subset.is_reg]
        rng = random.Random(f"{validation_seed(spec, config)}/validation")
        if spec.validation_split > 0 and len(candidates) > 1:
            count = min(len(candidates) - 1, max(1, round(len(candidates) * spec.validation_split)))
            chosen = set(rng.sample(candidates, count))
            training.append((spec, [im for i, im in enumerate(images) if i not in chosen]))
            validation.append((spec, [images[i] for i in sorted(chosen)]))
        else:
            training.append((spec, images))
    if not validation:
        for spec, images in datasets:
            candidates = [image for image in images if not image.subset.is_reg]
            rng = random.Random(f"{validation_seed(spec, config)}/validation")
            if candidates:
                picked = rng.sample(candidates, min(FROM_TRAINING, len(candidates)))
                validation.append((spec, picked))
    return training, [(spec, images) for spec, images in validation if images]


def build_validation_set(
    config: Config,
    validation: list[tuple[DatasetSpec, list[TrainImage]]],
    make_caption: Any,
    vae: Any,
    held_out: bool,
    num_timesteps: int = 1000,
) -> ValidationSet | None:
    """Encode the validation images once (fixed seed), with their captions and noise."""
    if not validation:
        return None
    once = [(spec, [dataclasses.replace(image, repeats=1) for image in images])
            for spec, images in validation]  # fmt: skip
    seed = validation_seed(validation[0][0], config)
    source = EpochBatches(once, make_caption, seed=seed)
    limit = config.training.max_validation_steps or len(source)
    generator = torch.Generator().manual_seed(seed)
    spread = num_timesteps / TIMESTEPS_PER_IMAGE
    timesteps = [int((k + 0.5) * spread) for k in range(TIMESTEPS_PER_IMAGE)]
    batches, noise = [], []
    for index in range(min(limit, len(source))):
        batch = source[index]
        if "pixels" in batch:
            with torch.no_grad():
                pixels = batch.pop("pixels").to(vae.device, vae.dtype)
                raw = vae.encode(pixels).latent_dist.sample(generator=_on(generator, vae.device))
                batch["latents"] = scale_latents(raw, vae).float().cpu()
        shape = (len(timesteps), *batch["latents"].shape)
        noise.append(torch.randn(shape, generator=generator))
        batches.append(batch)
    held = sum(len(images) for _, images in validation) if held_out else 0
    result = ValidationSet(batches, noise, timesteps, held)
    where = f"{held} held-out images" if held else f"{result.images} of the training images"
    log.info("validation loss: %s, timesteps %s", where, timesteps)
    return result


def _on(generator: torch.Generator, device: torch.device) -> torch.Generator | None:
    return generator if device.type == "cpu" else None


def validation_loss(
    config: Config, model: Any, vset: ValidationSet, precision: Any, noise_scheduler: Any
) -> float:
    """The mean denoising loss (mean squared error of the prediction, as sd-scripts' l2 loss,
    weighted by the images' loss masks) over every validation image and timestep, under
    no_grad, with the models in eval mode."""
    pipeline, device = model.loaded.pipeline, precision.device
    modes = [(module, module.training) for module in (pipeline.unet, *model.text_encoders)]
    for module, _ in modes:
        module.eval()
    total, count = 0.0, 0
    autocast = (
        torch.autocast(device.type, dtype=precision.autocast_dtype)
        if precision.autocast_dtype
        else contextlib.nullcontext()
    )
    try:
        with torch.no_grad(), autocast:
            for batch, noise in zip(vset.batches, vset.noise, strict=True):
                latents = batch["latents"].to(device, precision.weight_dtype)
                captions = [model.expand(caption) for caption in batch["captions"]]
                input_ids = [
                    tokenize_captions(tok, captions, config.model.max_token_length).input_ids
                    for tok in model.tokenizers
                ]
                condition = encode(
                    model.loaded.family, model.text_encoders, input_ids, config.model.clip_skip
                )
                extra = None
                if condition.pooled is not None:
                    time_ids = sdxl_time_ids(batch).to(device, condition.pooled.dtype)
                    extra = {"text_embeds": condition.pooled, "time_ids": time_ids}
                for t, timestep_noise in zip(vset.timesteps, noise, strict=True):
                    timesteps = torch.full((latents.shape[0],), t, device=device, dtype=torch.long)
                    eps = timestep_noise.to(device, latents.dtype)
                    noisy = noise_scheduler.add_noise(latents, eps, timesteps)
                    prediction = pipeline.unet(
                        noisy, timesteps, condition.context.to(noisy.dtype), added_cond_kwargs=extra
                    ).sample
                    target = prediction_target(noise_scheduler, latents, eps, timesteps)
                    error = (prediction.float() - target.float()) ** 2
                    error = apply_loss_masks(error, batch.get("loss_masks"))
                    total += float(error.mean(dim=(1, 2, 3)).sum())
                    count += latents.shape[0]
    finally:
        for module, was_training in modes:
            module.train(was_training)
    return total / max(count, 1)
