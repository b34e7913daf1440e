"""The noise, timestep and loss maths on plain tensors, against hand computations of what
sd-scripts computes (library/train_util.py, library/custom_train_functions.py)."""

from __future__ import annotations

import math

import pytest
import torch

from ti_core.config.run_config import TrainingConfig
from ti_core.training.diffusion import (
    draw_timesteps,
    enforce_zero_terminal_snr,
    noisy_latents,
    snr_table,
    training_scheduler,
)
from ti_core.training.losses import huber_threshold, image_losses, pixel_losses
from ti_core.training.noise import draw_noise, pyramid_noise


def sd_scheduler(v: bool = False):
    from diffusers import DDPMScheduler

    base = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    return training_scheduler(base, v)


def gen(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


LATENTS = torch.randn((2, 4, 16, 16), generator=gen(0))


def test_default_noise_and_timesteps_are_the_plain_draws():
    # Today's training: randn, then timesteps in [0, 1000); the options' defaults keep it.
    noisy, timesteps, noise = noisy_latents(LATENTS, sd_scheduler(), gen(), TrainingConfig())
    g = gen()
    expected_noise = torch.randn(LATENTS.shape, generator=g)
    expected_t = torch.randint(0, 1000, (2,), generator=g)
    assert torch.equal(noise, expected_noise) and torch.equal(timesteps, expected_t)
    assert torch.equal(noisy, sd_scheduler().add_noise(LATENTS, expected_noise, expected_t))


def test_timestep_range_is_honoured():
    assert set(draw_timesteps(64, gen(), 500, 500, 1000).tolist()) == {500}
    drawn = draw_timesteps(4000, gen(), 200, 300, 1000)
    assert drawn.min() >= 200 and drawn.max() < 300 and len(set(drawn.tolist())) == 100
    assert set(draw_timesteps(8, gen(), 700, 400, 1000).tolist()) == {400}  # sd-scripts' rule


def test_ip_noise_changes_the_noisy_input_but_not_the_target_noise():
    plain = noisy_latents(LATENTS, sd_scheduler(), gen(), TrainingConfig())
    options = TrainingConfig(ip_noise_gamma=0.1)
    noisy, timesteps, noise = noisy_latents(LATENTS, sd_scheduler(), gen(), options)
    assert torch.equal(noise, plain[2]) and torch.equal(timesteps, plain[1])
    assert not torch.allclose(noisy, plain[0])
    g = gen()
    torch.randn(LATENTS.shape, generator=g), torch.randint(0, 1000, (2,), generator=g)
    extra = 0.1 * torch.randn(LATENTS.shape, generator=g)
    expected = sd_scheduler().add_noise(LATENTS, noise + extra, timesteps)
    assert torch.allclose(noisy, expected, atol=1e-6)


def test_random_strengths_scale_by_a_draw_between_0_and_the_value():
    options = TrainingConfig(noise_offset=0.5, noise_offset_random_strength=True)
    g = gen()
    base = torch.randn(LATENTS.shape, generator=g)
    strength = torch.rand(1, generator=g) * 0.5
    offset = torch.randn((2, 4, 1, 1), generator=g)
    assert torch.allclose(draw_noise(LATENTS, gen(), options), base + strength * offset)


def test_adaptive_noise_scale_raises_the_offset_by_the_channel_means():
    latents = LATENTS + torch.tensor([3.0, -1.0, 0.0, 0.5]).view(1, 4, 1, 1)
    options = TrainingConfig(noise_offset=0.1, adaptive_noise_scale=0.2)
    g = gen()
    base = torch.randn(latents.shape, generator=g)
    offset = torch.randn((2, 4, 1, 1), generator=g)
    strength = torch.clamp(0.1 + 0.2 * latents.mean(dim=(2, 3), keepdim=True).abs(), min=0.0)
    noise = draw_noise(latents, gen(), options)
    assert torch.allclose(noise, base + strength * offset, atol=1e-6)
    plain_offset = draw_noise(latents, gen(), TrainingConfig(noise_offset=0.1))
    assert not torch.allclose(noise, plain_offset)


def test_multires_noise_keeps_the_shape_and_unit_scale_and_adds_coarse_structure():
    noise = torch.randn((4, 4, 64, 64), generator=gen(1))
    pyramid = pyramid_noise(noise, gen(2), iterations=6, discount=0.8)
    assert pyramid.shape == noise.shape
    assert abs(float(pyramid.std()) - 1.0) < 1e-4

    # Coarse layers make neighbouring pixels alike; white noise's neighbours are unrelated.
    def neighbour_correlation(x):
        return float(
            torch.corrcoef(torch.stack([x[..., 1:].flatten(), x[..., :-1].flatten()]))[0, 1]
        )

    assert abs(neighbour_correlation(noise)) < 0.05 < 0.3 < neighbour_correlation(pyramid)
    options = TrainingConfig(multires_noise_iterations=6, multires_noise_discount=0.8)
    assert not torch.allclose(
        draw_noise(LATENTS, gen(), options), draw_noise(LATENTS, gen(), TrainingConfig())
    )


def test_zero_terminal_snr_makes_the_last_alpha_bar_zero_and_keeps_the_first():
    plain = sd_scheduler(v=True)
    rescaled = training_scheduler(plain, True, zero_terminal_snr=True)
    assert float(rescaled.alphas_cumprod[-1]) == 0.0
    assert float(plain.alphas_cumprod[-1]) > 0.004
    assert math.isclose(
        float(rescaled.alphas_cumprod[0]), float(plain.alphas_cumprod[0]), rel_tol=1e-5
    )
    assert torch.all(rescaled.alphas_cumprod[1:] < rescaled.alphas_cumprod[:-1])
    # The loss weights keep the SNR of the schedule before the rescale, as sd-scripts' do.
    assert torch.allclose(snr_table(rescaled), snr_table(plain))
    before = rescaled.alphas_cumprod.clone()
    enforce_zero_terminal_snr(rescaled)  # a second call changes nothing
    assert torch.equal(rescaled.alphas_cumprod, before)


PRED = torch.randn((3, 4, 8, 8), generator=gen(3))
TARGET = torch.randn((3, 4, 8, 8), generator=gen(4))


def test_huber_and_smooth_l1_differ_from_l2_and_approach_it_and_l1_at_the_limits():
    l2 = pixel_losses(PRED, TARGET, "l2")
    l1 = pixel_losses(PRED, TARGET, "l1")
    c = torch.full((3,), 0.1)
    huber = pixel_losses(PRED, TARGET, "huber", c)
    smooth = pixel_losses(PRED, TARGET, "smooth_l1", c)
    assert not torch.allclose(huber.mean(), l2.mean(), rtol=0.1)
    assert not torch.allclose(smooth.mean(), huber.mean(), rtol=0.1)
    # Pseudo-Huber: the squared error when the threshold is far above the errors...
    big = torch.full((3,), 100.0, dtype=torch.float64)  # float64: no cancellation at large c
    near_l2 = pixel_losses(PRED.double(), TARGET.double(), "huber", big)
    assert torch.allclose(near_l2, l2.double(), rtol=1e-3, atol=1e-6)
    # ... and twice the absolute error minus 2c when it is far below (smooth_l1's 2|d|).
    tiny = torch.full((3,), 1e-4)
    assert torch.allclose(pixel_losses(PRED, TARGET, "smooth_l1", tiny), 2 * l1, atol=1e-3)
    d, cc = PRED - TARGET, 0.1
    assert torch.allclose(huber, 2 * cc * (torch.sqrt(d**2 + cc**2) - cc))


def test_huber_schedules_against_a_hand_computation():
    scheduler = sd_scheduler()
    t = torch.tensor([0, 500, 999])
    constant = huber_threshold(t, scheduler, "constant", 0.1, 2.0)
    assert torch.allclose(constant, torch.full((3,), 0.2))
    exponential = huber_threshold(t, scheduler, "exponential", 0.1, 2.0)
    expected = [2.0 * math.exp(math.log(0.1) / 1000 * float(step)) for step in t]
    assert torch.allclose(exponential, torch.tensor(expected), rtol=1e-5)
    snr = huber_threshold(t, scheduler, "snr", 0.1, 2.0)
    a = scheduler.alphas_cumprod[t]
    assert torch.allclose(snr, 0.9 / (1 + ((1 - a) / a).sqrt()) ** 2 + 0.1)
    assert float(snr[0]) > float(snr[1]) > float(snr[2]) > 0.1


def weights(options: TrainingConfig, v: bool = False, t=(0, 10, 500, 999)) -> torch.Tensor:
    ones = torch.ones((len(t), 4, 8, 8))
    # A loss of 1 per pixel (l1 of 1 - 0): the image losses are the weights themselves.
    return image_losses(ones, torch.zeros_like(ones), torch.tensor(t), sd_scheduler(v), options)


def hand_snr(t=(0, 10, 500, 999)) -> torch.Tensor:
    a = sd_scheduler().alphas_cumprod[list(t)]
    return a / (1 - a)


def test_debiased_estimation_weights_by_one_over_root_snr():
    snr = hand_snr().clamp(max=1000)
    assert torch.allclose(
        weights(TrainingConfig(loss_type="l1", debiased_estimation_loss=True)), 1 / snr.sqrt()
    )
    v = weights(TrainingConfig(loss_type="l1", debiased_estimation_loss=True), v=True)
    assert torch.allclose(v, 1 / (snr + 1))


def test_v_pred_like_loss_adds_the_loss_over_the_snr_scale():
    snr = hand_snr().clamp(max=1000)
    scale = snr / (snr + 1)
    got = weights(TrainingConfig(loss_type="l1", v_pred_like_loss=0.3))
    assert torch.allclose(got, 1 + 0.3 / scale)
    scaled = weights(TrainingConfig(loss_type="l1", scale_v_pred_loss_like_noise_pred=True), v=True)
    assert torch.allclose(scaled, scale)


def test_min_snr_and_the_defaults_are_unchanged():
    assert torch.equal(weights(TrainingConfig(loss_type="l1")), torch.ones(4))
    snr = hand_snr()
    got = weights(TrainingConfig(loss_type="l1", min_snr_gamma=5.0))
    assert torch.allclose(got, snr.clamp(max=5.0) / snr)


@pytest.mark.parametrize("loss_type", ["huber", "smooth_l1"])
def test_huber_losses_take_their_threshold_from_the_options(loss_type):
    t = torch.tensor([100, 200, 300])
    scheduler = sd_scheduler()
    low = image_losses(
        PRED, TARGET, t, scheduler, TrainingConfig(loss_type=loss_type, huber_c=0.05)
    )
    high = image_losses(
        PRED, TARGET, t, scheduler, TrainingConfig(loss_type=loss_type, huber_c=0.5)
    )
    assert not torch.allclose(low, high)
