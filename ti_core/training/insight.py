"""What tells a user, during the run, whether the embedding is good: each measurement writes the
validation loss, the vector health, any new hint and the saved step to keep into the run folder
(events `validation`, `vectors`, `hint`, `suggestion`). The loop says when to measure.
"""

from __future__ import annotations

import logging
from typing import Any

from ti_core.config.run_config import Config
from ti_core.run_folder.writer import RunFolder
from ti_core.training.health import Vocabulary, Watch, vector_health
from ti_core.training.optim import optimizer_eval_mode
from ti_core.training.scores import Scores
from ti_core.training.validation import ValidationSet, validation_loss

log = logging.getLogger(__name__)


class Insight:
    def __init__(
        self,
        config: Config,
        run: RunFolder,
        model: Any,
        validation: ValidationSet | None,
        precision: Any,
        noise_scheduler: Any,
        optimizer: Any = None,
    ) -> None:
        self.config, self.run, self.model = config, run, model
        self.validation, self.precision = validation, precision
        self.noise_scheduler, self.optimizer = noise_scheduler, optimizer
        self.vocabulary = Vocabulary.of(model)
        self.initial = [tokens.vectors.detach().float().cpu().clone() for tokens in model.tokens]
        options = config.optimizer
        self.watch = Watch(options.optimizer_type, options.learning_rate)
        self.last_step: int | None = None
        self.scores = Scores(config, run, model)

    def measure(self, step: int, saved: dict[int, str] | None = None) -> None:
        """Validation loss (when on), vector health, hints and the suggestion, at `step`.
        `saved`: the embedding files saved so far by step (the suggestion picks among them)."""
        if not self.run.writer:  # a data-parallel helper process: the first one measures
            return
        if self.optimizer is not None:
            optimizer_eval_mode(self.optimizer)  # schedule-free: measure the averaged weights
        if step != self.last_step:
            self.last_step = step
            self._figures(step)
        self.watch.saved.update(saved or {})
        self.scores.at(step, saved or {})  # CLIP-I/CLIP-T of a step just saved (clip_model)
        suggestion = self.watch.suggestion()
        if suggestion is not None:
            suggested_step, path, why = suggestion
            self.run.suggestion(step=suggested_step, path=path, why=why)

    def _figures(self, step: int) -> None:
        if self.validation is not None:
            self.run.status("validating")
            loss = validation_loss(
                self.config, self.model, self.validation, self.precision, self.noise_scheduler
            )
            self.run.validation(step=step, loss=loss)
            for hint in self.watch.validation(step, loss):
                self._hint(step, hint)
            self.run.status("training")
        health = vector_health(self.model, self.vocabulary, self.initial)
        self.run.vectors(step=step, **health)
        for hint in self.watch.vectors(step, health):
            self._hint(step, hint)

    def _hint(self, step: int, hint: Any) -> None:
        log.info("hint (%s): %s", hint.kind, hint.message)
        self.run.hint(step=step, kind=hint.kind, message=hint.message)
