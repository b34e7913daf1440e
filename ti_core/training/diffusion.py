"""The diffusion side of one training step: the noise schedule, the timesteps, the noisy input
and the target, as sd-scripts computes them (epsilon or v-prediction targets).

The noise itself is drawn in training/noise.py, the loss and its weights in training/losses.py.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

from ti_core.config.training_options import NoiseOptions
from ti_core.training.noise import draw_noise, perturbed

log = logging.getLogger(__name__)


def training_scheduler(
    pipeline_scheduler: Any, v_parameterization: bool, zero_terminal_snr: bool = False
) -> Any:
    """A DDPM scheduler with the model's noise schedule, for adding noise during training."""
    from diffusers import DDPMScheduler

    prediction_type = "v_prediction" if v_parameterization else "epsilon"
    scheduler = DDPMScheduler.from_config(
        pipeline_scheduler.config, prediction_type=prediction_type, clip_sample=False
    )
    if zero_terminal_snr:
        enforce_zero_terminal_snr(scheduler)
    return scheduler


def enforce_zero_terminal_snr(scheduler: Any) -> None:
    """Rescale the schedule's betas so the last timestep is pure noise (Lin et al. 2023,
    "Common Diffusion Noise Schedules and Sample Steps are Flawed"), in place; a second call
    does nothing. The loss weights keep the SNR of the schedule as it was (`snr_table`), as
    in sd-scripts, whose weights would otherwise divide by the new zero."""
    if getattr(scheduler, "zero_terminal_snr", False):
        return
    if scheduler.config.prediction_type != "v_prediction":
        log.warning(
            "zero_terminal_snr is on but the model predicts epsilon, not v: the last "
            "timestep has nothing to predict, so training may go wrong. It is meant for "
            "v_parameterization models."
        )
    scheduler.all_snr = snr_table(scheduler)
    alphas_bar_sqrt = scheduler.alphas_cumprod.sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    # Shift so the last is zero, then scale so the first is as it was.
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
    alphas_bar = alphas_bar_sqrt**2
    alphas = torch.cat([alphas_bar[0:1], alphas_bar[1:] / alphas_bar[:-1]])
    scheduler.betas = 1 - alphas
    scheduler.alphas = 1.0 - scheduler.betas
    scheduler.alphas_cumprod = torch.cumprod(scheduler.alphas, dim=0)
    scheduler.zero_terminal_snr = True


def snr_table(scheduler: Any) -> Tensor:
    """Signal-to-noise ratio of every timestep, alpha_bar / (1 - alpha_bar); after
    zero_terminal_snr, that of the schedule before the rescale."""
    stored = getattr(scheduler, "all_snr", None)
    if stored is not None:
        return stored
    alphas = scheduler.alphas_cumprod
    return alphas / (1 - alphas)


def draw_timesteps(
    count: int, generator: torch.Generator, min_timestep: int, max_timestep: int, schedule: int
) -> Tensor:
    """`count` timesteps drawn evenly from [min_timestep, max_timestep); when the range is
    empty, all at max_timestep (sd-scripts' rule). max_timestep is capped at the schedule's
    length, which is sd-scripts' default."""
    high, device = min(max_timestep, schedule), generator.device
    if min_timestep < high:
        return torch.randint(min_timestep, high, (count,), generator=generator, device=device)
    return torch.full((count,), high, dtype=torch.long, device=device)


def noisy_latents(
    latents: Tensor, scheduler: Any, generator: torch.Generator, options: NoiseOptions
) -> tuple[Tensor, Tensor, Tensor]:
    """(noisy latents, timesteps, noise) for a batch; `noise` is what the target is made of.
    All randomness comes from `generator` (on its device: see noise.batch_generator), in
    sd-scripts' order: noise, timesteps, input perturbation."""
    noise = draw_noise(latents, generator, options)
    schedule = scheduler.config.num_train_timesteps
    timesteps = draw_timesteps(
        latents.shape[0], generator, options.min_timestep, options.max_timestep, schedule
    )
    noise_in = perturbed(noise, generator, options)
    timesteps = timesteps.to(latents.device)
    noise = noise.to(latents.device, latents.dtype)
    noise_in = noise_in.to(latents.device, latents.dtype)
    return scheduler.add_noise(latents, noise_in, timesteps), timesteps, noise


def prediction_target(scheduler: Any, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    return noise
