"""The [training] options of the noise, the timesteps and the loss, named and defaulted as
sd-scripts' flags. run_config.TrainingConfig takes them in; training/noise.py and
training/losses.py act on them. Where sd-scripts' default is "not given" (None), the off value
here is 0, which its code treats the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from ti_core.config.options import opt

LOSS_TYPES = ("l1", "l2", "huber", "smooth_l1")
HUBER_SCHEDULES = ("constant", "exponential", "snr")


@dataclass
class NoiseOptions:
    """What noise is added to the latents, and at which timesteps."""

    noise_offset: float = opt(
        0.0,
        "Offset noise: add this much of one random value per image and channel to the noise, "
        "so the embedding can learn very dark or bright images (about 0.1; 0 = off).",
        min=0.0,
    )
    noise_offset_random_strength: bool = opt(
        False, "Draw each batch's offset strength at random between 0 and noise_offset."
    )
    adaptive_noise_scale: float = opt(
        0.0,
        "Raise noise_offset by this times each channel's mean latent value (its magnitude); "
        "needs noise_offset. Negative values lower it, never below 0 (0 = off).",
    )
    multires_noise_iterations: int = opt(
        0,
        "Multi-resolution (pyramid) noise: add this many layers of coarser noise "
        "(about 6 to 10; 0 = off).",
        min=0,
    )
    multires_noise_discount: float = opt(
        0.3,
        "Weight of each coarser layer of multi-resolution noise relative to the one before "
        "(only with multires_noise_iterations).",
        min=0.0,
    )
    ip_noise_gamma: float = opt(
        0.0,
        "Input perturbation: the noisy input gets this much extra noise that the target "
        "does not contain, a regularizer (about 0.1; 0 = off).",
        min=0.0,
    )
    ip_noise_gamma_random_strength: bool = opt(
        False, "Draw each batch's input perturbation strength at random between 0 and "
        "ip_noise_gamma.",
    )  # fmt: skip
    zero_terminal_snr: bool = opt(
        False,
        "Rescale the noise schedule so the last timestep is pure noise (zero terminal SNR); "
        "meant for v-prediction models.",
    )
    min_timestep: int = opt(
        0,
        "Lowest timestep trained (0 to 999). Equal to max_timestep: train at that one timestep.",
        min=0,
        max=999,
    )
    max_timestep: int = opt(
        1000,
        "Timesteps trained are below this (1 to 1000; at most the schedule's length).",
        min=1,
        max=1000,
    )


@dataclass
class LossOptions:
    """How the prediction's error becomes the loss, and how each timestep's loss is weighted."""

    loss_type: str = opt(
        "l2",
        "Per-pixel loss: l2 (squared error), l1 (absolute error), huber (pseudo-Huber: "
        "squared for small errors, absolute for large ones) or smooth_l1.",
        choices=LOSS_TYPES,
    )
    huber_schedule: str = opt(
        "snr",
        "How huber and smooth_l1's threshold follows the timestep: constant (huber_c times "
        "huber_scale), exponential (from huber_scale at timestep 0 down to huber_c times "
        "huber_scale at the last) or snr (from the noise level; huber_scale unused).",
        choices=HUBER_SCHEDULES,
    )
    huber_c: float = opt(
        0.1,
        "Threshold parameter of the huber and smooth_l1 losses (see huber_schedule).",
        min=0.0,
    )
    huber_scale: float = opt(
        1.0,
        "Scale of the huber and smooth_l1 threshold (constant and exponential schedules).",
        min=0.0,
    )
    min_snr_gamma: float = opt(
        0.0,
        "Min-SNR weighting: weigh down the low-noise timesteps' loss, capping the "
        "signal-to-noise ratio at this gamma (5 is the paper's value; 0 = off).",
        min=0.0,
    )
    scale_v_pred_loss_like_noise_pred: bool = opt(
        False,
        "Scale a v-prediction model's loss per timestep so it weighs timesteps as an "
        "epsilon model's loss does (needs v_parameterization).",
    )
    v_pred_like_loss: float = opt(
        0.0,
        "Add this fraction of a v-prediction-like loss to an epsilon model's loss "
        "(not with v_parameterization; 0 = off).",
        min=0.0,
    )
    debiased_estimation_loss: bool = opt(
        False,
        "Debiased estimation: weigh each timestep's loss by 1/sqrt(SNR) "
        "(1/(SNR+1) for v-prediction), so low-noise timesteps count less.",
    )
    masked_loss: bool = opt(
        False,
        "Weigh each pixel's loss by a mask image from conditioning_data_dir (white = learned, "
        "black = ignored). alpha_mask masks by transparency without this.",
    )
