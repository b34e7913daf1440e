"""Vector health: is the embedding moving, and is it still the size of a word?

Per trained vector and text encoder: its L2 norm, its drift (1 - cosine to the vector it started
from: 0 = unmoved), and the 3 vocabulary tokens nearest to it by cosine; per encoder the
vocabulary's median norm. An embedding that overtrains grows far past that median until it
swallows the prompt (DTI, arXiv 2512.13672); one whose learning rate is too low never drifts.
`Watch` turns those figures and the validation losses into plain hints, and picks the saved
step to keep.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

NEAREST = 3
NOT_MOVING_DRIFT = 1e-4  # largest drift of any vector still "not moving"
NOT_MOVING_AFTER = 50  # steps before a still embedding is worth a hint
RUNAWAY_TIMES = 4.0  # norm above this many vocabulary medians: "likely overtraining"
RISES_TO_OVERFIT = 3  # validation losses rising in a row since the best one
# A learning rate that usually moves an embedding, by optimizer (the not_moving hint's advice).
USUAL_RATES = {"adamw": "5e-3", "adamw8bit": "5e-3", "lion": "1e-4", "sgdnesterov": "0.1",
               "prodigy": "1.0", "adafactor": "1e-3"}  # fmt: skip


def encoder_names(count: int) -> list[str]:
    return ["text_encoder", "text_encoder_2"][:count]


@dataclass
class Vocabulary:
    """What the vectors are compared with, per text encoder: the frozen token table (the
    model's own, not a copy) and its row norms."""

    tables: list[torch.Tensor]  # (vocab, dim), on the model's device
    row_norms: list[torch.Tensor]  # (vocab,)
    median_norms: list[float]
    tokenizer: Any

    @classmethod
    def of(cls, model: Any) -> Vocabulary:
        tables = [tokens.table.weight.detach() for tokens in model.tokens]
        norms = [table.float().norm(dim=1).clamp_min(1e-12) for table in tables]
        medians = [float(norm.median()) for norm in norms]
        return cls(tables, norms, medians, model.tokenizers[0])

    def nearest(self, index: int, vectors: torch.Tensor) -> list[list[int]]:
        table, norms = self.tables[index], self.row_norms[index]
        unit = F.normalize(vectors.to(table.device, torch.float32), dim=1)
        cosines = (unit @ table.float().T) / norms
        return cosines.topk(NEAREST, dim=1).indices.cpu().tolist()


def vector_health(model: Any, vocabulary: Vocabulary, initial: list[torch.Tensor]) -> dict:
    """The `vectors` event's fields: {"encoders": {name: [{norm, drift, nearest}, ...]},
    "vocab_median_norm": {name: x}}; vectors in the order the run's embeddings hold them."""
    encoders, medians = {}, {}
    names = encoder_names(len(model.tokens))
    for index, (name, tokens, start) in enumerate(zip(names, model.tokens, initial, strict=True)):
        vectors = tokens.vectors.detach().float().cpu()
        cosine_to_start = F.cosine_similarity(vectors, start.float().cpu(), dim=1)
        nearest = vocabulary.nearest(index, vectors)
        encoders[name] = [
            {
                "norm": round(float(vector.norm()), 6),
                "drift": round(max(0.0, 1.0 - float(cosine)), 8),
                "nearest": vocabulary.tokenizer.convert_ids_to_tokens(ids),
            }
            for vector, cosine, ids in zip(vectors, cosine_to_start, nearest, strict=True)
        ]
        medians[name] = round(vocabulary.median_norms[index], 6)
    return {"encoders": encoders, "vocab_median_norm": medians}


def limit_norms(model: Any, vocabulary: Vocabulary, preserve: bool, max_norm: float) -> None:
    """preserve_embedding_norm: every vector rescaled to its encoder's vocabulary median norm;
    max_embedding_norm: a vector above it shrunk to it. In place, after an optimizer step."""
    if not preserve and not max_norm:
        return
    with torch.no_grad():
        for tokens, median in zip(model.tokens, vocabulary.median_norms, strict=True):
            norms = tokens.vectors.norm(dim=1, keepdim=True).clamp_min(1e-12)
            target = torch.full_like(norms, median) if preserve else norms
            if max_norm:
                target = target.clamp(max=max_norm)
            tokens.vectors.mul_(target / norms)


@dataclass
class Hint:
    kind: str  # not_moving | norm_runaway | overfitting | encoder_idle
    message: str


@dataclass
class Watch:
    """Reads each measurement and says each kind of hint once, and which saved step to keep."""

    optimizer_type: str
    learning_rate: Any
    said: set[str] = field(default_factory=set)
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, validation loss)
    saved: dict[int, str] = field(default_factory=dict)  # step -> embedding file
    runaway_steps: set[int] = field(default_factory=set)
    suggested: tuple[int, str] | None = None

    def vectors(self, step: int, health: dict) -> list[Hint]:
        hints = []
        drifts = {name: max((v["drift"] for v in vs), default=0.0)
                  for name, vs in health["encoders"].items()}  # fmt: skip
        if step >= NOT_MOVING_AFTER and max(drifts.values()) < NOT_MOVING_DRIFT:
            usual = USUAL_RATES.get(self.optimizer_type.lower(), "a larger one")
            hints.append(Hint("not_moving", (
                f"the vectors have barely moved in {step} steps (drift below "
                f"{NOT_MOVING_DRIFT:g}): the learning rate {self.learning_rate} is probably too "
                f"low for {self.optimizer_type}; try {usual}."
            )))  # fmt: skip
        for name, vectors in health["encoders"].items():
            median = health["vocab_median_norm"][name]
            biggest = max(v["norm"] for v in vectors)
            if biggest > RUNAWAY_TIMES * median:
                self.runaway_steps.add(step)
                hints.append(Hint("norm_runaway", (
                    f"{name}: a vector's norm is {biggest:.3g}, {biggest / median:.1f} times the "
                    f"vocabulary's median ({median:.3g}): likely overtraining. Keep an earlier "
                    "step, lower the learning rate, or set max_embedding_norm."
                )))  # fmt: skip
        if len(drifts) == 2:
            (first, a), (second, b) = drifts.items()
            idle = [n for n, mine, other in ((first, a, b), (second, b, a))
                    if mine < NOT_MOVING_DRIFT <= other]  # fmt: skip
            if idle and step >= NOT_MOVING_AFTER:
                hints.append(Hint("encoder_idle", (
                    f"{idle[0]}'s vectors are not moving while the other encoder's are: that "
                    "half of the SDXL embedding learns nothing (check its learning rate and "
                    "that its rows are trained)."
                )))  # fmt: skip
        return self._once(hints)

    def validation(self, step: int, loss: float) -> list[Hint]:
        self.losses.append((step, loss))
        best_step, _ = min(self.losses, key=lambda item: item[1])
        since = [value for s, value in self.losses if s >= best_step]
        rising = len(since) > RISES_TO_OVERFIT and all(
            later > earlier for earlier, later in zip(since, since[1:], strict=False)
        )
        if rising:
            return self._once([Hint("overfitting", (
                f"the validation loss has risen for {len(since) - 1} measurements since step "
                f"{best_step}: the embedding is likely overfitting; keep the step saved near "
                f"{best_step}."
            ))])  # fmt: skip
        return []

    def suggestion(self) -> tuple[int, str, str] | None:
        """(step, path, why) of the saved step to keep: the lowest validation loss among saved
        steps whose vectors had not run away; None until one qualifies or when unchanged."""
        measured = {step: loss for step, loss in self.losses}
        candidates = [(measured[step], step) for step in self.saved
                      if step in measured and step not in self.runaway_steps]  # fmt: skip
        if not candidates:
            return None
        loss, step = min(candidates)
        if self.suggested == (step, self.saved[step]):
            return None
        self.suggested = (step, self.saved[step])
        why = f"lowest validation loss of the saved steps ({loss:.5f})"
        if self.runaway_steps:
            why += f"; steps {sorted(self.runaway_steps)} left out: norm ran away"
        return step, self.saved[step], why

    def _once(self, hints: list[Hint]) -> list[Hint]:
        new = [hint for hint in hints if hint.kind not in self.said]
        self.said.update(hint.kind for hint in new)
        return new
