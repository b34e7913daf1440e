"""The noise of one training step, as sd-scripts draws it: Gaussian noise, optionally with offset
noise (its strength random or raised by the latents' means) and multi-resolution noise, and the
input perturbation added to the noisy input only.

Every draw comes from the `generator` given (a CPU generator), in sd-scripts' order, so a
batch's noise depends only on the seed and the batch, whatever the device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ti_core.config.training_options import NoiseOptions


def draw_noise(latents: Tensor, generator: torch.Generator, options: NoiseOptions) -> Tensor:
    """The noise the model learns to predict (on the CPU, float32), shaped like `latents`."""
    noise = torch.randn(latents.shape, generator=generator)
    if options.noise_offset:
        noise = with_offset(noise, latents, generator, options)
    if options.multires_noise_iterations:
        noise = pyramid_noise(
            noise, generator, options.multires_noise_iterations, options.multires_noise_discount
        )
    return noise


def with_offset(
    noise: Tensor, latents: Tensor, generator: torch.Generator, options: NoiseOptions
) -> Tensor:
    """Offset noise: one random value per image and channel, added to every pixel, lets the
    model shift overall brightness (crosslabs' offset noise)."""
    strength: float | Tensor = options.noise_offset
    if options.noise_offset_random_strength:
        strength = torch.rand(1, generator=generator) * options.noise_offset
    if options.adaptive_noise_scale:
        # Images whose latents are far from zero on average get a stronger offset.
        channel_means = latents.detach().float().mean(dim=(2, 3), keepdim=True).abs().cpu()
        strength = torch.clamp(strength + options.adaptive_noise_scale * channel_means, min=0.0)
    return noise + strength * torch.randn((*latents.shape[:2], 1, 1), generator=generator)


def pyramid_noise(
    noise: Tensor, generator: torch.Generator, iterations: int, discount: float
) -> Tensor:
    """Multi-resolution noise: coarser and coarser noise (each layer 2 to 4 times smaller, at
    `discount` times the weight of the one before) upscaled and added, then scaled back to
    about unit standard deviation."""
    batch, channels, height, width = noise.shape
    noise = noise.clone()
    for i in range(iterations):
        ratio = float(torch.rand((), generator=generator)) * 2 + 2
        small_h = max(1, int(height / ratio**i))
        small_w = max(1, int(width / ratio**i))
        coarse = torch.randn((batch, channels, small_h, small_w), generator=generator)
        noise += F.interpolate(coarse, size=(height, width), mode="bilinear") * discount**i
        if small_h == 1 or small_w == 1:
            break  # the coarsest layer is one pixel across
    return noise / noise.std()


def perturbed(noise: Tensor, generator: torch.Generator, options: NoiseOptions) -> Tensor:
    """The noise put into the noisy input: with input perturbation (ip_noise_gamma) it carries
    extra noise that the target does not, else it is `noise` itself."""
    if not options.ip_noise_gamma:
        return noise
    strength: float | Tensor = options.ip_noise_gamma
    if options.ip_noise_gamma_random_strength:
        strength = torch.rand(1, generator=generator) * options.ip_noise_gamma
    return noise + strength * torch.randn(noise.shape, generator=generator)
