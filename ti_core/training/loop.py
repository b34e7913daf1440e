"""The training run: set up, then one loop of steps; everything it does is written to the run
folder (config.toml, events.jsonl, train.log, samples/, embeddings, state/).

Read top to bottom: `train()` is the story; the helpers below it carry the detail.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ti_core.config.run_config import Config
from ti_core.config.toml_io import save_config
from ti_core.data.batches import BatchLoader, sdxl_time_ids
from ti_core.data.buckets import check_bucket_reso_steps
from ti_core.data.latents import scale_latents
from ti_core.data.spec import DatasetSpec, ImageEntry
from ti_core.embeddings.text_encoding import encode
from ti_core.models.devices import choose_device
from ti_core.models.tokenizer import tokenizer_cache
from ti_core.run_folder.names import CONFIG_FILE, SAMPLE_NOW, SAVE_NOW, STOP
from ti_core.run_folder.writer import STEP_EVENTS_EVERY_S, RunFolder
from ti_core.training.diffusion import (
    enforce_zero_terminal_snr,
    noisy_latents,
    prediction_target,
    training_scheduler,
)
from ti_core.training.distributed import ShareOfBatches, Team
from ti_core.training.health import limit_norms
from ti_core.training.hub import HubUploads
from ti_core.training.insight import Insight
from ti_core.training.losses import image_losses
from ti_core.training.noise import batch_generator, batch_seed
from ti_core.training.optim import (
    current_lr,
    optimizer_for_config,
    optimizer_train_mode,
    scheduler_for_config,
)
from ti_core.training.outputs import Outputs, epochs_between_copies, every
from ti_core.training.runtime import announce_runtime_options
from ti_core.training.setup import (
    Precision,
    TrainableModel,
    build_batches,
    choose_precision,
    grad_scaler,
    load_base_model,
    prepare_model,
    total_steps,
)
from ti_core.training.trackers import open_trackers
from ti_core.training.validation import is_on

log = logging.getLogger(__name__)


@dataclass
class Training:
    """Everything the loop uses, built by `set_up`."""

    model: TrainableModel
    precision: Precision
    batches: Any
    optimizer: Any
    lr_schedule: Any
    noise_scheduler: Any
    scaler: Any
    outputs: Outputs
    insight: Insight
    max_steps: int
    num_epochs: int


def train(
    config: Config,
    specs: list[DatasetSpec],
    run: RunFolder,
    entries: list[list[ImageEntry]] | None = None,
    team: Team = Team(),
) -> Path | None:
    """Train the embedding; returns the final file. Stops early, saving, on STOP/SIGINT.
    `entries`: the images the preflight's dataset check found (else they are searched again).
    `team`: the processes of a data-parallel run; only the first one saves (and returns)."""
    t = set_up(config, specs, run, entries, team)
    training, token = config.training, config.token
    saving, sampling = config.saving, config.sampling
    outputs, batches, insight = t.outputs, t.batches, t.insight
    accumulation = training.gradient_accumulation_steps
    data = config.dataset  # batches read ahead in workers, kept across epochs if persistent
    loader = BatchLoader(batches, data.max_data_loader_n_workers,
                         data.persistent_data_loader_workers)  # fmt: skip
    step, first_epoch, skip_batches = outputs.resume(len(batches))
    saving.save_every_n_epochs = epochs_between_copies(saving, t.num_epochs)
    trackers = open_trackers(config, run)  # TensorBoard / wandb (log_with); closed by the CLI
    run.status("training")
    run.step_events_every = STEP_EVENTS_EVERY_S  # steps reach events.jsonl about once a second
    started, reason = time.monotonic(), "finished"
    # The console's bar; off when stderr is not a terminal (the GUI reads events.jsonl).
    progress = tqdm(total=t.max_steps, initial=step, unit="step", dynamic_ncols=True,
                    disable=None if team.is_main else True)  # fmt: skip
    if sampling.sample_at_first and step == 0:
        outputs.sample(step)
    if is_on(config) and step == 0:
        insight.measure(step)  # where the vectors start: the baseline of every figure
    for epoch in range(first_epoch, t.num_epochs + 1):
        batches.set_epoch(epoch)
        for batch_index, batch in loader.epoch(epoch, skip_batches):
            which = batch_index * team.size + team.rank  # this batch's place in the epoch
            noise_seed = batch_seed(config.training.seed, epoch, which)
            optimizer_train_mode(t.optimizer)  # schedule-free: back from the averaged weights
            loss = step_loss(config, t.model, batch, t.precision, t.noise_scheduler, noise_seed)
            shown_loss = outputs.read_loss(team.average(loss.detach()))  # one read to the host
            if not math.isfinite(shown_loss):  # back to the last good vectors, or stop
                if outputs.roll_back(step, shown_loss):
                    continue
                raise outputs.fail_non_finite(step, shown_loss)
            backward(loss / accumulation, t.scaler)
            if (batch_index + 1) % accumulation and batch_index + 1 < len(batches):
                continue
            team.average_gradients(t.model.parameters)
            optimizer_step(t.optimizer, t.model.parameters, t.scaler, training.max_grad_norm)
            limit_norms(t.model, insight.vocabulary, token.preserve_embedding_norm,
                        token.max_embedding_norm)  # fmt: skip
            outputs.remember_good()
            t.lr_schedule.step()
            step += 1
            outputs.position = (step, epoch, batch_index + 1)
            run.step(step=step, epoch=epoch, loss=shown_loss, lr=current_lr(t.optimizer),
                     **speed(started, step - outputs.resumed_step, t.max_steps - step),
                     total_steps=t.max_steps)  # fmt: skip
            trackers.log({"loss": shown_loss, "lr": current_lr(t.optimizer)}, step)
            progress.update(1)
            progress.set_postfix(loss=f"{shown_loss:.4f}", epoch=epoch, refresh=False)
            # --- periodic work after a step, and the GUI's requests (flag files) ---
            saved = every(step, saving.save_every_n_steps)
            if saved:
                outputs.save_step_copy(step)
            if saved or every(step, training.validate_every_n_steps):
                insight.measure(step, outputs.saved)
            if run.take_flag(SAVE_NOW):
                outputs.save_now(step)
            if every(step, sampling.sample_every_n_steps) or run.take_flag(SAMPLE_NOW):
                outputs.sample(step)
            if team.anyone(run.take_flag(STOP) or run.stop_requested, t.precision.device):
                reason = "stopped"
            if reason == "stopped" or step >= t.max_steps:
                break
        else:  # --- periodic work after an epoch ---
            skip_batches = 0
            saved = every(epoch, saving.save_every_n_epochs)
            if saved:
                outputs.save_epoch_copy(step, epoch)
            if saved or every(epoch, training.validate_every_n_epochs):
                insight.measure(step, outputs.saved)
            if every(epoch, sampling.sample_every_n_epochs):
                outputs.sample(step)
            continue
        break
    progress.close()
    outputs.save_final(step)
    insight.measure(step, outputs.saved)
    return outputs.finish(step, reason if step < t.max_steps else "finished")


def set_up(
    config: Config,
    specs: list[DatasetSpec],
    run: RunFolder,
    entries: list[list[ImageEntry]] | None,
    team: Team,
) -> Training:
    """The model with its trainable rows, the batches, the optimizer and the outputs."""
    from ti_core.embeddings.specs import embedding_specs
    from ti_core.embeddings.tokens import add_embeddings, text_parts

    hub = HubUploads(config, run.writer)  # takes huggingface_token out before config.toml
    if team.is_main:
        save_config(config, run.path / CONFIG_FILE)
    run.status("loading")
    training, device = config.training, team.device(choose_device())
    announce_runtime_options(config, device, team)  # what fp8_base, highvram, ddp_* do here
    precision = choose_precision(
        training.mixed_precision, device, training.full_fp16 or training.full_bf16
    )
    with tokenizer_cache(config.model.tokenizer_cache_dir):  # a single file's tokenizer
        loaded = load_base_model(config, device)
    for spec in specs:
        check_bucket_reso_steps(spec, loaded.family)
    tokenizers, text_encoders = text_parts(loaded.pipeline)
    embeddings = embedding_specs(config)
    placeholders = add_embeddings(
        tokenizers, text_encoders, embeddings,
        generator=torch.Generator().manual_seed(training.seed),
    )  # fmt: skip
    model = prepare_model(
        loaded, embeddings, placeholders, tokenizers, text_encoders, config, precision
    )
    run.status("caching" if config.dataset.cache_latents else "preparing data")
    if not team.is_main:
        team.wait_for_all()  # the first process fills a latent cache on disk first
    noise_scheduler = training_scheduler(
        loaded.pipeline.scheduler, loaded.v_parameterization, training.zero_terminal_snr
    )
    steps = noise_scheduler.config.num_train_timesteps
    all_batches, validation = build_batches(config, specs, model, precision, entries, steps)
    if team.is_main:
        team.wait_for_all()
    batches = ShareOfBatches(all_batches, team) if team.size > 1 else all_batches
    max_steps, num_epochs = total_steps(config, len(batches))
    # captions that change with the step (token_warmup_step) learn the step of each batch
    all_batches.count_steps(training.gradient_accumulation_steps, max_steps, team.size)
    optimizer = optimizer_for_config(model.parameters, config.optimizer)
    lr_schedule = scheduler_for_config(optimizer, config.optimizer, max_steps)
    scaler = grad_scaler(precision)
    log.info(
        "training %s: %d steps (%d epochs of %d batches%s), %s, attention %s",
        model.token_strings, max_steps, num_epochs, len(batches),
        f" in each of {team.size} processes" if team.size > 1 else "",
        precision.device, model.attention,
    )  # fmt: skip
    return Training(
        model, precision, batches, optimizer, lr_schedule, noise_scheduler, scaler,
        Outputs(config, run, model, optimizer, lr_schedule, scaler, hub),
        Insight(config, run, model, validation, precision, noise_scheduler, optimizer),
        max_steps, num_epochs,
    )  # fmt: skip


def step_loss(
    config: Config,
    model: TrainableModel,
    batch: dict[str, Any],
    precision: Precision,
    noise_scheduler: Any,
    noise_seed: int,
) -> torch.Tensor:
    """One batch forward: latents, noise, text conditioning with the trainable rows, UNet."""
    pipeline, device = model.loaded.pipeline, precision.device
    # A batch's randomness depends only on (seed, epoch, batch): a resumed run draws the same,
    # on the training device (no noise copied from the host).
    generator = batch_generator(noise_seed, device)
    if config.training.zero_terminal_snr:  # set_up did it; a caller's own scheduler too (once)
        enforce_zero_terminal_snr(noise_scheduler)
    if "latents" in batch:
        # non_blocking: a GPU copy from the host then waits for no queued work
        latents = batch["latents"].to(device, precision.weight_dtype, non_blocking=True)
    else:
        with torch.no_grad():
            pixels = batch["pixels"].to(device, pipeline.vae.dtype, non_blocking=True)
            raw = pipeline.vae.encode(pixels).latent_dist.sample(generator=generator)
            latents = scale_latents(raw, pipeline.vae).to(precision.weight_dtype)
    input_ids = model.input_ids(batch["captions"], config.model.max_token_length)
    autocast = (
        torch.autocast(device.type, dtype=precision.autocast_dtype)
        if precision.autocast_dtype
        else contextlib.nullcontext()
    )
    with autocast:
        condition = encode(
            model.loaded.family, model.text_encoders, input_ids, config.model.clip_skip
        )
        noisy, timesteps, noise = noisy_latents(
            latents, noise_scheduler, generator, config.training
        )
        extra = None
        if condition.pooled is not None:
            time_ids = sdxl_time_ids(batch).to(device, condition.pooled.dtype, non_blocking=True)
            extra = {"text_embeds": condition.pooled, "time_ids": time_ids}
        prediction = pipeline.unet(
            noisy, timesteps, condition.context.to(noisy.dtype), added_cond_kwargs=extra
        ).sample
    target = prediction_target(noise_scheduler, latents, noise, timesteps)
    masks = batch.get("loss_masks")  # per-pixel weights: alpha_mask, masked_loss
    losses = image_losses(prediction, target, timesteps, noise_scheduler, config.training, masks)
    return (losses * batch["loss_weights"].to(device, non_blocking=True)).mean()


def backward(loss: torch.Tensor, scaler: Any) -> None:
    (scaler.scale(loss) if scaler else loss).backward()


def optimizer_step(
    optimizer: Any, parameters: list[torch.nn.Parameter], scaler: Any, max_grad_norm: float
) -> None:
    if scaler:
        scaler.unscale_(optimizer)
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def speed(started: float, steps_done: int, steps_left: int) -> dict[str, float]:
    """it/s over this session's steps and the time left at that pace."""
    elapsed = max(time.monotonic() - started, 1e-9)
    rate = steps_done / elapsed
    return {"it_s": round(rate, 3), "eta_s": round(steps_left / rate, 1) if rate else -1.0}
