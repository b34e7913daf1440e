"""Captions to UNet conditioning, with only the new token rows trainable.

The new vectors live in a small (N, dim) parameter per text encoder, spliced into the
embedding lookup (`TrainableTokens`): the vocabulary table is never copied, resized or given
to the optimizer. Encoding follows sd-scripts: clip_skip, 75-token chunks merged back into
one sequence for max_token_length 150/225, and for SDXL both encoders' penultimate layers
plus the second encoder's pooled, projected end-of-text state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ti_core.embeddings.tokens import tokenize_captions

CHUNK = 77  # one CLIP window: <start> + 75 tokens + <end>/<pad>
END_OF_TEXT = 49407
CAPTIONS_KEPT = 8192  # token ids of this many captions stay cached (a few MB at most)


class TrainableTokens(nn.Module):
    """A text encoder's token embedding whose ids >= first_new_id come from `vectors`."""

    def __init__(self, table: nn.Embedding, first_new_id: int, vectors: Tensor) -> None:
        super().__init__()
        self.table = table
        self.first_new_id = first_new_id
        self.vectors = nn.Parameter(vectors.detach().clone().to(table.weight.device))

    @property
    def weight(self) -> Tensor:
        """The frozen vocabulary table (what diffusers/transformers helpers look at)."""
        return self.table.weight

    def forward(self, input_ids: Tensor) -> Tensor:
        is_new = (input_ids >= self.first_new_id).unsqueeze(-1)
        known = self.table(input_ids.clamp(max=self.first_new_id - 1))
        new_index = (input_ids - self.first_new_id).clamp(min=0, max=len(self.vectors) - 1)
        new = self.vectors[new_index].to(known.dtype)
        return torch.where(is_new, new, known)


class CaptionIds:
    """One tokenizer's ids of captions, each caption tokenized once (a run sees the same
    captions epoch after epoch) and kept on the text encoder's device, so a step neither
    tokenizes nor copies ids to the GPU. At most `kept` captions stay (then the oldest go)."""

    def __init__(
        self, tokenizer: Any, max_token_length: int, device: torch.device, kept: int = CAPTIONS_KEPT
    ) -> None:
        self.tokenizer, self.max_token_length = tokenizer, max_token_length
        self.device, self.kept = device, kept
        self._ids: dict[str, Tensor] = {}

    def __call__(self, captions: Sequence[str]) -> Tensor:
        """(B, chunks, 77) ids, exactly as tokenize_captions makes them."""
        new = [caption for caption in dict.fromkeys(captions) if caption not in self._ids]
        if new:
            ids = tokenize_captions(self.tokenizer, new, self.max_token_length).input_ids
            self._ids.update(zip(new, ids.to(self.device), strict=True))
        batch = torch.stack([self._ids[caption] for caption in captions])
        while len(self._ids) > self.kept:
            del self._ids[next(iter(self._ids))]
        return batch


def install_trainable_tokens(
    text_encoder: Any, placeholder_ids: list[int], vectors: Tensor
) -> TrainableTokens:
    """Splice trainable rows for `placeholder_ids` (consecutive, after the vocabulary) into the
    encoder's embedding lookup; returns the module whose `.vectors` is the parameter to train."""
    first = placeholder_ids[0]
    if placeholder_ids != list(range(first, first + len(placeholder_ids))):
        raise ValueError(f"placeholder ids must be consecutive, got {placeholder_ids}")
    current = text_encoder.get_input_embeddings()
    table = current.table if isinstance(current, TrainableTokens) else current
    if first != table.num_embeddings:
        raise ValueError(f"placeholder ids start at {first}, the vocabulary has {len(table)}")
    tokens = TrainableTokens(table, first, vectors)
    text_encoder.set_input_embeddings(tokens)
    return tokens


def _clip_model(text_encoder: Any) -> Any:
    """CLIPTextModelWithProjection wraps the CLIPTextModel as .text_model (transformers 5)."""
    return getattr(text_encoder, "text_model", text_encoder)


def hidden_states(
    text_encoder: Any, input_ids: Tensor, clip_skip: int = 1, final_layer_norm: bool = True
) -> tuple[Tensor, Tensor]:
    """(B*chunks, 77, dim) states of the layer `clip_skip` from the end (1 = last), and the
    last layer's normalised states (for pooling)."""
    output = _clip_model(text_encoder)(input_ids, output_hidden_states=True)
    states = output.hidden_states[-clip_skip]
    if final_layer_norm:
        states = _clip_model(text_encoder).final_layer_norm(states)
    return states, output.last_hidden_state


def merge_chunks(states: Tensor, batch_size: int) -> Tensor:
    """sd-scripts' long-caption rule: each 77-token window keeps its 75 inner tokens; the first
    window's <start> and the last window's final token close the sequence (77, 152 or 227)."""
    states = states.reshape(batch_size, -1, states.shape[-1])
    if states.shape[1] == CHUNK:
        return states
    parts = [states[:, :1]]
    parts += [states[:, start : start + CHUNK - 2] for start in range(1, states.shape[1], CHUNK)]
    parts.append(states[:, -1:])
    return torch.cat(parts, dim=1)


def pooled_end_of_text(last_states: Tensor, input_ids: Tensor, projection: nn.Module) -> Tensor:
    """SDXL's pooled text embedding: the state at the first <end> of each caption's first
    window, projected. Found by id, not argmax: placeholder ids are larger than <end>'s."""
    first_window_ids = input_ids[:, 0]
    first_window_states = last_states.reshape(input_ids.shape[0], -1, CHUNK, last_states.shape[-1])[
        :, 0
    ]
    position = (first_window_ids == END_OF_TEXT).int().argmax(dim=-1)
    pooled = first_window_states[torch.arange(len(position)), position]
    return projection(pooled.to(projection.weight.dtype))


@dataclass
class Conditioning:
    context: Tensor  # (B, tokens, dim): the UNet's encoder_hidden_states
    pooled: Tensor | None = None  # SDXL: (B, 1280) text_embeds for added_cond_kwargs


def encode(
    family: str, text_encoders: list[Any], input_ids: list[Tensor], clip_skip: int = 1
) -> Conditioning:
    """Encode tokenized captions (one (B, chunks, 77) tensor per text encoder)."""
    batch_size = input_ids[0].shape[0]
    flat = [ids.reshape(-1, CHUNK).to(_device_of(encoder)) for ids, encoder in zip(
        input_ids, text_encoders, strict=True)]  # fmt: skip
    if family != "sdxl":
        states, _ = hidden_states(text_encoders[0], flat[0], clip_skip)
        return Conditioning(merge_chunks(states, batch_size))
    # SDXL: both encoders' penultimate layers, without the final layer norm, side by side.
    states_l, _ = hidden_states(text_encoders[0], flat[0], 2, final_layer_norm=False)
    states_g, last_g = hidden_states(text_encoders[1], flat[1], 2, final_layer_norm=False)
    context = torch.cat(
        [merge_chunks(states_l, batch_size), merge_chunks(states_g, batch_size)], dim=-1
    )
    pooled = pooled_end_of_text(
        last_g, input_ids[1].to(last_g.device), text_encoders[1].text_projection
    )
    return Conditioning(context, pooled)


def _device_of(module: Any) -> torch.device:
    return next(module.parameters()).device
