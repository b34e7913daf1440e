"""The noise of one training step, as sd-scripts draws it: Gaussian noise, optionally with offset
noise (its strength random or raised by the latents' means) and multi-resolution noise, and the
input perturbation added to the noisy input only.

Every draw comes from the `generator` given, in sd-scripts' order, on the generator's device:
the training device's generator (`batch_generator`) draws there, so a GPU step copies no noise
from the host, and a batch's noise depends only on (seed, epoch, batch) and the device's kind.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ti_core.config.training_options import NoiseOptions


def batch_seed(seed: int, epoch: int, batch: int) -> int:
    """The seed of one batch's randomness: the same (seed, epoch, batch) in a resumed run."""
    return hash((seed, epoch, batch)) % 2**63  # ints hash the same in every process


def batch_generator(noise_seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on `device` seeded for one batch. The CPU draws what it always drew; CUDA's
    generator draws a different (but as reproducible) sequence, with no host-to-device copy."""
    device = torch.device(device)
    if device.type not in ("cpu", "cuda", "mps"):
        device = torch.device("cpu")  # no generator of its own there: draw on the CPU
    return torch.Generator(device).manual_seed(noise_seed)


def draw_noise(latents: Tensor, generator: torch.Generator, options: NoiseOptions) -> Tensor:
    """The noise the model learns to predict (float32, on the generator's device), shaped like
    `latents`."""
    noise = torch.randn(latents.shape, generator=generator, device=generator.device)
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
    device = generator.device
    strength: float | Tensor = options.noise_offset
    if options.noise_offset_random_strength:
        strength = torch.rand(1, generator=generator, device=device) * options.noise_offset
    if options.adaptive_noise_scale:
        # Images whose latents are far from zero on average get a stronger offset.
        channel_means = latents.detach().float().mean(dim=(2, 3), keepdim=True).abs().to(device)
        strength = torch.clamp(strength + options.adaptive_noise_scale * channel_means, min=0.0)
    offset = torch.randn((*latents.shape[:2], 1, 1), generator=generator, device=device)
    return noise + strength * offset


def pyramid_noise(
    noise: Tensor, generator: torch.Generator, iterations: int, discount: float
) -> Tensor:
    """Multi-resolution noise: coarser and coarser noise (each layer 2 to 4 times smaller, at
    `discount` times the weight of the one before) upscaled and added, then scaled back to
    about unit standard deviation. (Each layer's size is read back to the host: on a GPU, one
    sync per layer, as sd-scripts has.)"""
    batch, channels, height, width = noise.shape
    device = generator.device
    noise = noise.clone()
    for i in range(iterations):
        ratio = float(torch.rand((), generator=generator, device=device)) * 2 + 2
        small_h = max(1, int(height / ratio**i))
        small_w = max(1, int(width / ratio**i))
        coarse = torch.randn(
            (batch, channels, small_h, small_w), generator=generator, device=device
        )
        noise += F.interpolate(coarse, size=(height, width), mode="bilinear") * discount**i
        if small_h == 1 or small_w == 1:
            break  # the coarsest layer is one pixel across
    return noise / noise.std()


def perturbed(noise: Tensor, generator: torch.Generator, options: NoiseOptions) -> Tensor:
    """The noise put into the noisy input: with input perturbation (ip_noise_gamma) it carries
    extra noise that the target does not, else it is `noise` itself."""
    if not options.ip_noise_gamma:
        return noise
    device = generator.device
    strength: float | Tensor = options.ip_noise_gamma
    if options.ip_noise_gamma_random_strength:
        strength = torch.rand(1, generator=generator, device=device) * options.ip_noise_gamma
    return noise + strength * torch.randn(noise.shape, generator=generator, device=device)
