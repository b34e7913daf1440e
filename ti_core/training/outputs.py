"""What a training run leaves behind: embedding files (final, per step, per epoch, pruned),
resumable state and sample images. The loop (training/loop.py) decides when; this says how.
A stopped or failed run always keeps its last good embedding.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ti_core.atomic import atomic_path
from ti_core.config.run_config import Config
from ti_core.errors import TiError
from ti_core.run_folder.names import STATE_DIR, STATE_FILE
from ti_core.run_folder.writer import RunFolder
from ti_core.training.setup import TrainableModel

log = logging.getLogger(__name__)


class Outputs:
    def __init__(
        self,
        config: Config,
        run: RunFolder,
        model: TrainableModel,
        optimizer: Any,
        lr_schedule: Any,
        scaler: Any,
    ) -> None:
        self.config, self.run, self.model = config, run, model
        self.optimizer, self.lr_schedule, self.scaler = optimizer, lr_schedule, scaler
        self.position = (0, 1, 0)  # (step, epoch, batches done in that epoch)
        self.resumed_step = 0
        self.step_copies: list[list[Path]] = []
        self.epoch_copies: list[list[Path]] = []
        self.final_path: Path | None = None  # the first embedding's file under its final name

    # --- embedding files ----------------------------------------------------------------
    def save_embedding(self, step: int, suffix: str = "") -> list[Path]:
        """Every embedding of the run, each as <its file name><suffix>.<format>."""
        from ti_core.embeddings.writers import save_embedding

        if not self.run.writer:  # a data-parallel helper process: the first one saves
            return []
        saving, loaded = self.config.saving, self.model.loaded
        written: list[Path] = []
        for index, embedding in enumerate(self.model.embeddings):
            paths = save_embedding(
                self.run.path / f"{embedding.file_stem}{suffix}",
                self.model.vectors(index),
                format=saving.embedding_format,
                save_model_as=saving.save_model_as,
                token_string=embedding.token_string,
                step=step,
                family=loaded.family,
                v_parameterization=loaded.v_parameterization,
                save_precision=saving.save_precision,
                base_model_name=loaded.source,
                metadata={
                    "modelspec.title": embedding.file_stem,
                    "ti_trainer.init_word": embedding.init_word,
                },
            )
            for path in paths:
                self.run.checkpoint(step=step, path=str(path), format=saving.embedding_format)
            if not suffix and index == 0:
                self.final_path = paths[0]
            written += paths
        return written

    def save_step_copy(self, step: int) -> None:
        """A numbered copy (save_every_n_steps), keeping the last save_last_n_steps."""
        paths = self.save_embedding(step, f"-step{step:08d}")
        _keep_last(self.step_copies, paths, self.config.saving.save_last_n_steps)
        self.save_state_if_asked()

    def save_epoch_copy(self, step: int, epoch: int) -> None:
        """A numbered copy (save_every_n_epochs), keeping the last save_last_n_epochs."""
        paths = self.save_embedding(step, f"-{epoch:06d}")
        _keep_last(self.epoch_copies, paths, self.config.saving.save_last_n_epochs)
        self.save_state_if_asked()

    def save_now(self, step: int) -> None:
        """SAVE_NOW: the final file as it stands (and the state)."""
        self.save_embedding(step)
        self.save_state_if_asked()

    # --- the end of a run -----------------------------------------------------------------
    def finish(self, step: int, reason: str) -> Path:
        self.run.status("saving")
        self.save_now(step)
        self.run.done(reason=reason, path=str(self.final_path))
        log.info("%s at step %d: %s", reason, step, self.final_path)
        return self.final_path  # type: ignore[return-value]

    def fail_non_finite(self, step: int, loss: float) -> TiError:
        """Save and record the failure; the vectors still hold the last good step (the bad one
        was never applied). Returns the error for the loop to raise."""
        self.save_embedding(step)
        message = f"the loss became {loss} at step {step + 1}; training stopped"
        hint = (
            "lower the learning rate, or use mixed_precision = bf16 / no_half_vae "
            "(fp16 overflows); the embedding of the last good step is saved"
        )
        self.run.error(message=message, hint=hint)
        self.run.done(reason="failed", path=str(self.final_path))
        failure = TiError(f"{message}; {hint}")
        failure.recorded_in_run = True  # type: ignore[attr-defined]
        return failure

    # --- resumable state --------------------------------------------------------------------
    def save_state_if_asked(self) -> None:
        if self.config.saving.save_state:
            self.save_state()

    def save_state(self) -> Path:
        folder = self.run.path / STATE_DIR
        if not self.run.writer:
            return folder
        step, epoch, batches_done = self.position
        state = {
            "vectors": [t.vectors.detach().float().cpu().clone() for t in self.model.tokens],
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": self.lr_schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "step": step,
            "epoch": epoch,
            "batches_done": batches_done,
            "token_strings": self.model.token_strings,
        }
        with atomic_path(folder / STATE_FILE) as temporary:
            torch.save(state, temporary)
        return folder

    def resume(self, batches_per_epoch: int) -> tuple[int, int, int]:
        """(step, first epoch, batches to skip in it): where a --resume run picks up."""
        if not self.config.saving.resume:
            return 0, 1, 0
        folder = Path(self.config.saving.resume)
        path = folder / STATE_FILE if folder.is_dir() else folder
        if path.is_dir() or not path.is_file():
            path = folder / STATE_DIR / STATE_FILE
        if not path.is_file():
            raise TiError(f"resume = {folder}: no saved state there ({STATE_FILE} not found).")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state["token_strings"] != self.model.token_strings:
            raise TiError(
                f"resume = {folder}: that state trained {state['token_strings']}, this run "
                f"trains {self.model.token_strings}; use the same token settings."
            )
        with torch.no_grad():
            for tokens, vectors in zip(self.model.tokens, state["vectors"], strict=True):
                tokens.vectors.copy_(vectors)
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        if self.scaler and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        step, epoch, batches_done = state["step"], state["epoch"], state["batches_done"]
        if batches_done >= batches_per_epoch:
            epoch, batches_done = epoch + 1, 0
        self.resumed_step, self.position = step, (step, epoch, batches_done)
        log.info("resuming at step %d (epoch %d, batch %d)", step, epoch, batches_done)
        return step, epoch, batches_done

    # --- samples ------------------------------------------------------------------------------
    def sample(self, step: int) -> None:
        from ti_core.training.samples import make_training_samples

        if not self.run.writer:
            return
        if not self.config.sampling.sample_prompts:
            log.warning("no sample images at step %d: set sample_prompts (a prompts file)", step)
            return
        self.run.status("sampling")
        try:
            for path, prompt in make_training_samples(self.config, self.model, step):
                self.run.sample(step=step, path=str(path), prompt=prompt)
        except Exception as error:  # noqa: BLE001 - a failed sample must not end the run
            log.warning("sample images at step %d failed: %s", step, error)
        self.run.status("training")


def every(count: int, interval: int) -> bool:
    """Whether periodic work set to every `interval` steps/epochs is due at `count` (0 = off)."""
    return bool(interval) and count % interval == 0


def _keep_last(copies: list[list[Path]], paths: list[Path], keep: int) -> None:
    copies.append(paths)
    while keep and len(copies) > keep:
        for old in copies.pop(0):
            old.unlink(missing_ok=True)
