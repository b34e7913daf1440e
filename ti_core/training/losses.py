"""The loss of one training step, as sd-scripts computes it: a per-pixel loss (l2, l1, huber,
smooth_l1), weighted by the loss mask where there is one, averaged per image, then the
per-timestep weights (Min-SNR, v-prediction scaling, v-prediction-like loss, debiased
estimation), in sd-scripts' order. One loss per image, so regularization images can weigh
differently.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ti_core.config.training_options import LossOptions
from ti_core.training.diffusion import snr_table

SNR_CAP = 1000.0  # sd-scripts' cap on the SNR in its weights: at timestep 0 it is huge


def huber_threshold(
    timesteps: Tensor, scheduler: Any, schedule: str, huber_c: float, huber_scale: float
) -> Tensor:
    """The huber / smooth_l1 threshold of each image, from its timestep."""
    if schedule == "exponential":
        rate = -math.log(huber_c) / scheduler.config.num_train_timesteps
        return torch.exp(-rate * timesteps) * huber_scale
    if schedule == "snr":
        alphas = scheduler.alphas_cumprod.cpu()[timesteps.cpu()]
        sigmas = ((1.0 - alphas) / alphas) ** 0.5
        return ((1 - huber_c) / (1 + sigmas) ** 2 + huber_c).to(timesteps.device)
    return torch.full(timesteps.shape, huber_c * huber_scale, device=timesteps.device)


def pixel_losses(
    prediction: Tensor, target: Tensor, loss_type: str, threshold: Tensor | None = None
) -> Tensor:
    """The loss of every element; `threshold` (one per image) for huber and smooth_l1."""
    if loss_type == "l2":
        return F.mse_loss(prediction, target, reduction="none")
    if loss_type == "l1":
        return F.l1_loss(prediction, target, reduction="none")
    if threshold is None:
        raise ValueError(f"loss_type {loss_type!r} needs a threshold")
    c = threshold.view(-1, *([1] * (prediction.ndim - 1)))
    # Pseudo-Huber: about the squared error below c, about 2c times the absolute error above.
    smooth = torch.sqrt((prediction - target) ** 2 + c**2) - c
    if loss_type == "huber":
        return 2 * c * smooth
    if loss_type == "smooth_l1":
        return 2 * smooth
    raise ValueError(f"unknown loss_type {loss_type!r}")


def apply_loss_masks(losses: Tensor, masks: Tensor | None) -> Tensor:
    """Each element's loss times its pixels' mean mask weight (sd-scripts' apply_masked_loss:
    the (B, H, W) masks are area-averaged down to the latent's h x w). The mean over the image
    that follows still counts every element: a half-masked image's loss is half its unmasked
    half's mean, as in sd-scripts."""
    if masks is None:
        return losses
    weights = masks.to(losses.device, losses.dtype).unsqueeze(1)
    return losses * F.interpolate(weights, size=losses.shape[2:], mode="area")


def timestep_weights(timesteps: Tensor, scheduler: Any, options: LossOptions) -> Tensor | None:
    """The factor each image's loss is multiplied by, or None when no weighting is on.
    v_pred_like_loss adds a multiple of the loss, so it is a factor too."""
    o = options
    if not (o.min_snr_gamma or o.scale_v_pred_loss_like_noise_pred or o.v_pred_like_loss
            or o.debiased_estimation_loss):  # fmt: skip
        return None
    snr = snr_table(scheduler).to(timesteps.device)[timesteps]
    capped = torch.clamp(snr, max=SNR_CAP)
    is_v = scheduler.config.prediction_type == "v_prediction"
    weight = torch.ones_like(snr)
    if o.min_snr_gamma:
        clipped = torch.clamp(snr, max=o.min_snr_gamma)
        weight = weight * (clipped / (snr + 1) if is_v else clipped / snr)
    if o.scale_v_pred_loss_like_noise_pred:
        weight = weight * (capped / (capped + 1))
    if o.v_pred_like_loss:
        # loss + loss / scale * v: the v-prediction loss is the epsilon loss over this scale.
        weight = weight * (1 + o.v_pred_like_loss / (capped / (capped + 1)))
    if o.debiased_estimation_loss:
        weight = weight * (1 / (capped + 1) if is_v else 1 / torch.sqrt(capped))
    return weight


def image_losses(
    prediction: Tensor,
    target: Tensor,
    timesteps: Tensor,
    scheduler: Any,
    options: LossOptions,
    masks: Tensor | None = None,
) -> Tensor:
    """The loss of each image of the batch, weighted per pixel by `masks` (the batch's
    loss_masks, if any) and per timestep as the options say."""
    threshold = None
    if options.loss_type in ("huber", "smooth_l1"):
        threshold = huber_threshold(
            timesteps, scheduler, options.huber_schedule, options.huber_c, options.huber_scale
        )
    losses = pixel_losses(prediction.float(), target.float(), options.loss_type, threshold)
    losses = apply_loss_masks(losses, masks).mean(dim=(1, 2, 3))
    weight = timestep_weights(timesteps, scheduler, options)
    return losses if weight is None else losses * weight
