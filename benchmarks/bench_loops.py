"""The two training loops the benchmark compares, and how one is measured.

`ours` is built from the functions ti_core/training/loop.py runs (prepare_model, build_batches with
the latent cache, step_loss, backward, optimizer_step): the trained rows are a small (N, dim)
parameter spliced into the embedding lookup. `reference` is written the way the common public
Textual Inversion example (diffusers examples/textual_inversion/textual_inversion.py) trains:
the vocabulary table grows by the new tokens, AdamW runs over the whole table, the original
rows are copied back after every step (its `index_no_updates`), the VAE encodes every batch,
and the text encoder is in train mode. Same model, images, captions, batches, seed, precision.
Each loop runs in its own process, so peak RSS is that loop's alone.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from bench_setup import LEARNING_RATE, TOKEN_STRING, bench_config

from ti_core.embeddings.specs import embedding_specs
from ti_core.embeddings.tokens import add_embeddings, add_placeholders, text_parts
from ti_core.models.loading import LoadedModel, load_model
from ti_core.training.diffusion import training_scheduler
from ti_core.training.noise import batch_seed
from ti_core.training.setup import Precision, choose_precision

log = logging.getLogger("bench")
Step = Callable[[], float]  # one optimizer step; returns the loss


def measure(loop: str, options: Any) -> dict[str, Any]:
    """Load the model, build `loop`, run warm-up + timed steps; what the table shows."""
    device = torch.device(options.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_train: --device cuda, but torch sees no CUDA GPU here.")
    set_threads(device)
    precision = choose_precision(options.precision, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    load_started = time.perf_counter()
    loaded = load_model(options.model)
    setup_started = time.perf_counter()
    make = our_loop if loop == "ours" else reference_loop
    step, trained_values = make(loaded, options, precision)
    losses = [step()]
    synchronize(device)
    first_step_s = time.perf_counter() - setup_started
    for _ in range(options.warmup - 1):
        losses.append(step())
    synchronize(device)
    print(f"{loop}: first step after {first_step_s:.2f} s; timing {options.steps} steps",
          file=sys.stderr, flush=True)  # fmt: skip
    timed_started = time.perf_counter()
    for _ in range(options.steps):
        losses.append(step())
    synchronize(device)
    elapsed = time.perf_counter() - timed_started
    steps_per_s = options.steps / elapsed
    return {
        "loop": loop,
        "steps_per_s": steps_per_s,
        "images_per_s": steps_per_s * options.batch,
        "seconds_per_step": elapsed / options.steps,
        "first_step_s": first_step_s,
        "load_s": setup_started - load_started,
        "peak_rss_mib": peak_rss_mib(),
        "peak_cuda_mib": (
            torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
        ),
        "trained_values": trained_values,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "threads": torch.get_num_threads(),
        "dtype": str(precision.weight_dtype).removeprefix("torch."),
    }


# ---- ours: the trainer's own parts ----------------------------------------------------------


def our_loop(loaded: LoadedModel, options: Any, precision: Precision) -> tuple[Step, int]:
    """ti_core/training/loop.py's set-up and step, without the run folder around them."""
    from ti_core.data.run_data import dataset_specs
    from ti_core.training.loop import backward, optimizer_step, step_loss
    from ti_core.training.optim import build_optimizer, build_scheduler
    from ti_core.training.setup import build_batches, prepare_model

    config = bench_config(options.data, options.resolution, options.batch, options.seed,
                          options.precision, cache_latents=True)  # fmt: skip
    tokenizers, text_encoders = text_parts(loaded.pipeline)
    embeddings = embedding_specs(config)
    placeholders = add_embeddings(tokenizers, text_encoders, embeddings)
    model = prepare_model(loaded, embeddings, placeholders, tokenizers, text_encoders, config,
                          precision)  # fmt: skip
    batches, _ = build_batches(config, dataset_specs(config), model, precision)
    optimizer = build_optimizer(model.parameters, "AdamW", LEARNING_RATE, [])
    lr_schedule = build_scheduler(optimizer, "constant", LEARNING_RATE, total_steps(options))
    noise_scheduler = training_scheduler(loaded.pipeline.scheduler, loaded.v_parameterization)
    scaler = torch.amp.GradScaler("cuda") if precision.scale_loss else None
    stream = batch_stream(batches, options.seed)

    def step() -> float:
        batch, noise_seed = next(stream)
        loss = step_loss(config, model, batch, precision, noise_scheduler, noise_seed)
        backward(loss, scaler)
        optimizer_step(optimizer, model.parameters, scaler, config.training.max_grad_norm)
        lr_schedule.step()
        return float(loss.detach())

    return step, sum(parameter.numel() for parameter in model.parameters)


# ---- reference: the public example's way -----------------------------------------------------


def reference_loop(loaded: LoadedModel, options: Any, precision: Precision) -> tuple[Step, int]:
    """The diffusers example's loop. Its SDXL script trains CLIP-L's table only; here both
    encoders' tables train, so it learns what ours learns."""
    from diffusers.optimization import get_scheduler

    from ti_core.data.batches import EpochBatches, prepare_images, sdxl_time_ids
    from ti_core.data.run_data import caption_maker, dataset_specs
    from ti_core.data.sources import discover_images

    config = bench_config(options.data, options.resolution, options.batch, options.seed,
                          options.precision, cache_latents=False)  # fmt: skip
    pipeline, device, weight_dtype = loaded.pipeline, precision.device, precision.weight_dtype
    tokenizers, text_encoders = text_parts(pipeline)
    # Same new tokens and starting vectors as ours; then the example's way: grow the table.
    placeholders = add_placeholders(tokenizers, text_encoders, TOKEN_STRING,
                                    config.token.init_word)  # fmt: skip
    for tokenizer, encoder, ids, vectors in zip(tokenizers, text_encoders,
            placeholders.placeholder_ids, placeholders.initial_vectors, strict=True):  # fmt: skip
        encoder.resize_token_embeddings(len(tokenizer))
        with torch.no_grad():
            encoder.get_input_embeddings().weight[ids] = vectors
        encoder.requires_grad_(False)
        encoder.get_input_embeddings().requires_grad_(True)  # the whole table trains
        encoder.to(device)
    pipeline.vae.requires_grad_(False)
    pipeline.unet.requires_grad_(False)
    pipeline.unet.to(device, weight_dtype)
    pipeline.vae.to(device, weight_dtype)
    tables = [encoder.get_input_embeddings().weight for encoder in text_encoders]
    optimizer = torch.optim.AdamW(tables, lr=LEARNING_RATE, betas=(0.9, 0.999),
                                  weight_decay=1e-2, eps=1e-8)  # fmt: skip
    lr_schedule = get_scheduler("constant", optimizer=optimizer)
    scaler = torch.amp.GradScaler("cuda") if precision.scale_loss else None
    noise_scheduler = training_scheduler(pipeline.scheduler, loaded.v_parameterization)
    originals = [table.detach().clone() for table in tables]  # "keep original embeddings"
    new_ids = placeholders.placeholder_ids
    specs = dataset_specs(config)
    datasets = [(spec, prepare_images(discover_images(spec)[0], spec)) for spec in specs]
    batches = EpochBatches(datasets, caption_maker(config, placeholders.expand), seed=options.seed)
    stream = batch_stream(batches, options.seed)
    for encoder in text_encoders:
        encoder.train()

    def step() -> float:
        batch, noise_seed = next(stream)
        generator = torch.Generator().manual_seed(noise_seed)
        pixels = batch["pixels"].to(device, weight_dtype)
        latents = pipeline.vae.encode(pixels).latent_dist.sample(generator=generator).detach()
        latents = latents * pipeline.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=generator).to(device, latents.dtype)
        count = noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, count, (len(latents),), generator=generator).to(device)
        noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
        input_ids = [
            tokenizer(batch["captions"], padding="max_length", truncation=True,
                      max_length=tokenizer.model_max_length, return_tensors="pt"
                      ).input_ids.to(device)
            for tokenizer in tokenizers
        ]  # fmt: skip
        with autocast(precision):  # what accelerate wraps the prepared text encoder in
            if len(text_encoders) == 1:
                context, extra = text_encoders[0](input_ids[0])[0], None
            else:
                states_1 = text_encoders[0](input_ids[0], output_hidden_states=True)
                states_2 = text_encoders[1](input_ids[1], output_hidden_states=True)
                context = torch.cat(
                    [states_1.hidden_states[-2], states_2.hidden_states[-2]], dim=-1
                )
                time_ids = sdxl_time_ids(batch).to(device, weight_dtype)
                extra = {"text_embeds": states_2[0].to(weight_dtype), "time_ids": time_ids}
        prediction = pipeline.unet(
            noisy_latents, timesteps, context.to(weight_dtype), added_cond_kwargs=extra
        ).sample
        if noise_scheduler.config.prediction_type == "v_prediction":
            target = noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        loss = F.mse_loss(prediction.float(), target.float(), reduction="mean")
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        lr_schedule.step()
        optimizer.zero_grad()
        # "make sure we don't update any embedding weights besides the newly added token"
        with torch.no_grad():
            for table, original, ids in zip(tables, originals, new_ids, strict=True):
                index_no_updates = torch.ones((len(table),), dtype=torch.bool)
                index_no_updates[min(ids) : max(ids) + 1] = False
                table[index_no_updates] = original[index_no_updates]
        return float(loss.detach())

    return step, sum(table.numel() for table in tables)


# ---- shared helpers ------------------------------------------------------------------------


def batch_stream(batches: Any, seed: int) -> Iterator[tuple[dict[str, Any], int]]:
    """(batch, noise seed) for as many epochs as asked, as train.py walks them."""
    epoch = 0
    while True:
        epoch += 1
        batches.set_epoch(epoch)
        for batch_index in range(len(batches)):
            yield batches[batch_index], batch_seed(seed, epoch, batch_index)


def total_steps(options: Any) -> int:
    return options.warmup + options.steps


def autocast(precision: Precision) -> Any:
    import contextlib

    if precision.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(precision.device.type, dtype=precision.autocast_dtype)


def set_threads(device: torch.device) -> None:
    """The trainer's CPU thread rule (devices.choose_device): half the cores, unless
    OMP_NUM_THREADS says otherwise. Both loops run under the same rule."""
    if device.type == "cpu" and not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_rss_mib() -> float | None:
    """This process's peak resident memory: getrusage on Linux (KiB) and macOS (bytes),
    psutil's peak working set on Windows."""
    try:
        import resource
    except ImportError:
        try:
            import psutil
        except ImportError:
            return None
        return getattr(psutil.Process().memory_info(), "peak_wset", 0) / 2**20 or None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10
