"""The diffusion maths of one training step: noise, timesteps, the target, the loss.

As sd-scripts computes them: epsilon or v-prediction targets, optional offset noise, and
Min-SNR loss weighting; a per-image loss so regularization images can weigh differently.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def training_scheduler(pipeline_scheduler: Any, v_parameterization: bool) -> Any:
    """A DDPM scheduler with the model's noise schedule, for adding noise during training."""
    from diffusers import DDPMScheduler

    prediction_type = "v_prediction" if v_parameterization else "epsilon"
    return DDPMScheduler.from_config(
        pipeline_scheduler.config, prediction_type=prediction_type, clip_sample=False
    )


def noisy_latents(
    latents: Tensor, scheduler: Any, generator: torch.Generator, noise_offset: float = 0.0
) -> tuple[Tensor, Tensor, Tensor]:
    """(noisy latents, timesteps, noise) for a batch; all randomness from `generator` (CPU),
    so a step's noise depends only on the seed and the step, whatever the device."""
    noise = torch.randn(latents.shape, generator=generator)
    if noise_offset:
        # Offset noise (sd-scripts' --noise_offset): lets the model learn overall brightness.
        noise += noise_offset * torch.randn((*latents.shape[:2], 1, 1), generator=generator)
    count = scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, count, (latents.shape[0],), generator=generator)
    noise, timesteps = noise.to(latents.device, latents.dtype), timesteps.to(latents.device)
    return scheduler.add_noise(latents, noise, timesteps), timesteps, noise


def prediction_target(scheduler: Any, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    return noise


def image_losses(
    prediction: Tensor,
    target: Tensor,
    timesteps: Tensor,
    scheduler: Any,
    min_snr_gamma: float = 0.0,
) -> Tensor:
    """Mean squared error per image, Min-SNR weighted when min_snr_gamma > 0."""
    losses = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if min_snr_gamma:
        alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
        snr = alphas / (1 - alphas)
        clipped = torch.clamp(snr, max=min_snr_gamma)
        is_v = scheduler.config.prediction_type == "v_prediction"
        losses = losses * (clipped / (snr + 1) if is_v else clipped / snr)
    return losses
