"""Everything a training run needs before its first step, built from the config: the device
and precision, the frozen model with its trainable token rows, the batches, the optimizer.

training/loop.py reads top to bottom because the detail lives here.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ti_core.config.run_config import Config
from ti_core.data.spec import DatasetSpec, ImageEntry
from ti_core.embeddings.specs import EmbeddingSpec
from ti_core.embeddings.text_encoding import (
    CaptionIds,
    TrainableTokens,
    install_trainable_tokens,
)
from ti_core.embeddings.tokens import Placeholders, expand_all
from ti_core.models.loading import LoadedModel

log = logging.getLogger(__name__)


@dataclass
class Precision:
    device: torch.device
    weight_dtype: torch.dtype  # frozen UNet/VAE weights
    autocast_dtype: torch.dtype | None  # None: full float32
    scale_loss: bool  # fp16 on CUDA needs a gradient scaler
    # The text encoders: float32 unless full_fp16/full_bf16, because the gradient flows
    # through them into the vectors. The vectors themselves always stay float32 (the
    # optimizer's master copy): in fp16, Adam's second moment underflows to 0 and the first
    # update is NaN (seen on an H100 with full_fp16).
    text_dtype: torch.dtype = torch.float32


def choose_precision(
    mixed_precision: str, device: torch.device, full_precision: bool = False
) -> Precision:
    """fp16 needs a GPU; asked for on the CPU it falls back to float32 with one warning.
    `full_precision` (full_fp16/full_bf16) keeps the text encoders in that dtype too."""
    if mixed_precision == "fp16" and device.type == "cpu":
        also = " (full_fp16 too: the text encoder stays float32)" if full_precision else ""
        log.warning(
            "mixed_precision = fp16 needs a GPU; training in float32 on the CPU instead%s.", also
        )
        mixed_precision = "no"
    if mixed_precision == "no":
        return Precision(device, torch.float32, None, False)
    dtype = torch.float16 if mixed_precision == "fp16" else torch.bfloat16
    text_dtype = dtype if full_precision else torch.float32
    scale_loss = dtype == torch.float16 and device.type == "cuda"
    return Precision(device, dtype, dtype, scale_loss, text_dtype)


def load_base_model(config: Config, device: torch.device) -> LoadedModel:
    """The base model (and separate VAE); with lowram on CUDA, loaded straight into VRAM."""
    from ti_core.models.loading import load_model

    m = config.model
    if m.lowram and device.type != "cuda":
        log.warning(
            "lowram loads the model straight into GPU memory; on %s it loads into RAM as usual.",
            device.type.upper(),
        )
    return load_model(
        m.pretrained_model_name_or_path, m.v2, m.v_parameterization, m.vae,
        device=device if m.lowram else None,
        disable_mmap=config.training.disable_mmap_load_safetensors,
    )  # fmt: skip


def grad_scaler(precision: Precision) -> torch.amp.GradScaler | None:
    """The loss scaler fp16 training on CUDA needs (None otherwise)."""
    return torch.amp.GradScaler("cuda") if precision.scale_loss else None


def set_attention(
    unet: Any, xformers: bool, mem_eff_attn: bool, device: torch.device, sdpa: bool = False
) -> str:
    """PyTorch's SDPA by default (and for sdpa); xformers when asked and usable, else a warning
    and SDPA."""
    if xformers:
        if device.type != "cuda":
            log.warning("xformers needs CUDA; using PyTorch's SDPA attention instead.")
        else:
            try:
                unet.enable_xformers_memory_efficient_attention()
                return "xformers"
            except Exception as error:  # noqa: BLE001 - any failure means: not usable here
                log.warning("xformers is not usable (%s); using PyTorch's SDPA attention.", error)
    elif mem_eff_attn:
        log.info("mem_eff_attn: PyTorch's SDPA attention is memory-efficient; using it.")
    elif sdpa:
        log.info("sdpa: the UNet uses PyTorch's scaled-dot-product attention.")
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet.set_attn_processor(AttnProcessor2_0())
    return "sdpa"


@dataclass
class TrainableModel:
    """The frozen model, the trainable rows spliced into its text encoder(s), and the parts of
    the pipeline a step uses. Each text encoder has one block of trainable rows holding every
    embedding's vectors one after another (embedding i owns rows `rows(i)`)."""

    loaded: LoadedModel
    embeddings: list[EmbeddingSpec]
    placeholders: list[Placeholders]  # one per embedding, in the order of `embeddings`
    tokens: list[TrainableTokens]  # one per text encoder
    tokenizers: list[Any]
    text_encoders: list[Any]
    attention: str = "sdpa"
    parameters: list[torch.nn.Parameter] = field(default_factory=list)
    caption_ids: list[CaptionIds] = field(default_factory=list, init=False, repr=False)

    def expand(self, caption: str) -> str:
        return expand_all(self.placeholders, caption)

    def input_ids(self, captions: list[str], max_token_length: int) -> list[torch.Tensor]:
        """Each tokenizer's ids of `captions` (B, chunks, 77), on its text encoder's device;
        a caption seen before is not tokenized again."""
        if not self.caption_ids or self.caption_ids[0].max_token_length != max_token_length:
            self.caption_ids = [
                CaptionIds(tokenizer, max_token_length, next(encoder.parameters()).device)
                for tokenizer, encoder in zip(self.tokenizers, self.text_encoders, strict=True)
            ]
        return [ids(captions) for ids in self.caption_ids]

    @property
    def token_strings(self) -> list[str]:
        return [s for embedding in self.placeholders for s in embedding.token_strings]

    def rows(self, index: int) -> slice:
        start = sum(p.num_vectors for p in self.placeholders[:index])
        return slice(start, start + self.placeholders[index].num_vectors)

    def vectors(self, index: int) -> list[torch.Tensor]:
        """Embedding `index`'s current vectors per text encoder: float32 CPU copies."""
        rows = self.rows(index)
        return [t.vectors[rows].detach().float().cpu().clone() for t in self.tokens]


def prepare_model(
    loaded: LoadedModel,
    embeddings: list[EmbeddingSpec],
    placeholders: list[Placeholders],
    tokenizers: list[Any],
    text_encoders: list[Any],
    config: Config,
    precision: Precision,
) -> TrainableModel:
    """Freeze everything, move it to the device, then splice in the trainable rows."""
    pipeline, training = loaded.pipeline, config.training
    for module in (pipeline.unet, pipeline.vae, *text_encoders):
        module.requires_grad_(False)
        module.eval()
    vae_dtype = torch.float32 if config.model.no_half_vae else precision.weight_dtype
    pipeline.unet.to(precision.device, precision.weight_dtype)
    pipeline.vae.to(precision.device, vae_dtype)
    for encoder in text_encoders:
        encoder.to(precision.device, precision.text_dtype)  # the trained rows pass through it
    attention = set_attention(
        pipeline.unet, training.xformers, training.mem_eff_attn, precision.device, training.sdpa
    )
    if training.gradient_checkpointing:
        pipeline.unet.enable_gradient_checkpointing()
        pipeline.unet.train()  # checkpointing only runs in train mode; SD has no dropout
        for encoder in text_encoders:
            encoder.gradient_checkpointing_enable()
            encoder.train()
    if training.torch_compile:
        from ti_core.training.runtime import compile_unet

        compile_unet(pipeline.unet, training.dynamo_backend)
    tokens = []
    for index, encoder in enumerate(text_encoders):
        ids = [i for embedding in placeholders for i in embedding.placeholder_ids[index]]
        vectors = torch.cat([embedding.initial_vectors[index] for embedding in placeholders])
        tokens.append(install_trainable_tokens(encoder, ids, vectors.to(precision.device)))
    return TrainableModel(
        loaded, list(embeddings), list(placeholders), tokens, tokenizers, text_encoders,
        attention, [token.vectors for token in tokens],
    )  # fmt: skip


def total_steps(config: Config, batches_per_epoch: int) -> tuple[int, int]:
    """(optimizer steps, epochs): max_train_epochs wins over max_train_steps, as in sd-scripts."""
    accumulation = config.training.gradient_accumulation_steps
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / accumulation))
    if config.training.max_train_epochs:
        epochs = config.training.max_train_epochs
        return epochs * steps_per_epoch, epochs
    steps = config.training.max_train_steps
    return steps, math.ceil(steps / steps_per_epoch)


def build_batches(
    config: Config,
    specs: list[DatasetSpec],
    model: TrainableModel,
    precision: Precision,
    entries: list[list[ImageEntry]] | None = None,
    num_timesteps: int = 1000,
) -> tuple[Any, Any]:
    """The run's batches, and the validation set (None when validation is off). Validation
    images held out (validation_split) do not train; their latents are encoded before the
    VAE leaves the device, which it does after a latent cache is filled (training never
    needs it again)."""
    from ti_core.data.batches import EpochBatches
    from ti_core.data.latents import cache_latents, check_latent_cacheable, release_vae
    from ti_core.data.run_data import caption_maker, train_images
    from ti_core.training.validation import build_validation_set, hold_out, is_on

    if config.dataset.dataset_class:  # the user's class makes the batches; no folders to read
        from ti_core.data.custom_dataset import custom_batches

        return custom_batches(config, model), None
    datasets = train_images(specs, entries)
    make_caption = caption_maker(config, model.expand)
    vae = model.loaded.pipeline.vae
    validation = None
    if is_on(config):
        datasets, held = hold_out(datasets, config)
        split = any(spec.validation_split > 0 for spec in specs)
        validation = build_validation_set(config, held, make_caption, vae, split, num_timesteps)
    cache = None
    if config.dataset.cache_latents or config.dataset.cache_latents_to_disk:
        check_latent_cacheable(subset for spec in specs for subset in spec.subsets)
        images = [image for _, dataset_images in datasets for image in dataset_images]
        cache = cache_latents(
            vae,
            images,
            config.dataset.vae_batch_size,
            to_disk=config.dataset.cache_latents_to_disk,
            generator=torch.Generator().manual_seed(config.training.seed),
            skip_check=config.dataset.skip_cache_check,
        )
        if not config.training.highvram:  # highvram: the VAE and its memory stay on the GPU
            release_vae(vae)
    batches = EpochBatches(
        datasets,
        make_caption,
        seed=config.training.seed,
        prior_loss_weight=config.training.prior_loss_weight,
        latent_cache=cache,
    )
    return batches, validation
