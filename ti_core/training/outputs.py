"""What a training run leaves behind: embedding files (final, per step, per epoch, pruned),
resumable state and sample images. The loop (training/loop.py) decides when; this says how.
A stopped or failed run always keeps its last good embedding.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from ti_core.atomic import atomic_path, move_into_place
from ti_core.config.run_config import Config
from ti_core.errors import TiError
from ti_core.run_folder.names import STATE_DIR, STATE_FILE
from ti_core.run_folder.writer import RunFolder
from ti_core.training.hub import HubUploads
from ti_core.training.setup import TrainableModel

log = logging.getLogger(__name__)

STAGING_DIR = ".saving"  # embeddings are written here and checked before they replace the old
MAX_ROLLBACKS = 3


class Outputs:
    def __init__(
        self,
        config: Config,
        run: RunFolder,
        model: TrainableModel,
        optimizer: Any,
        lr_schedule: Any,
        scaler: Any,
        hub: HubUploads | None = None,
    ) -> None:
        self.config, self.run, self.model = config, run, model
        # Uploads to the Hub (huggingface_repo_id); set_up builds it before config.toml is
        # written, as it takes the token out of the config.
        self.hub = hub if hub is not None else HubUploads(config, run.writer)
        self.optimizer, self.lr_schedule, self.scaler = optimizer, lr_schedule, scaler
        self.position = (0, 1, 0)  # (step, epoch, batches done in that epoch)
        self.resumed_step = 0
        self.step_copies: list[list[Path]] = []
        self.epoch_copies: list[list[Path]] = []
        self.final_path: Path | None = None  # the first embedding's file under its final name
        self.saved: dict[int, str] = {}  # step -> the first embedding's file saved at it
        self.good: dict[str, Any] | None = None  # the last finite vectors and optimizer state
        self.pending: dict[str, Any] | None = None  # the last update's, until read_loss
        self.rollbacks = 0

    # --- embedding files ----------------------------------------------------------------
    def save_embedding(self, step: int, suffix: str = "") -> list[Path]:
        """Every embedding of the run, each as <its file name><suffix>.<format>."""
        self._read_averaged()
        from ti_core.embeddings.writers import run_model_spec, save_embedding

        if not self.run.writer:  # a data-parallel helper process: the first one saves
            return []
        saving, loaded = self.config.saving, self.model.loaded
        written: list[Path] = []
        staging = self.run.path / STAGING_DIR
        for index, embedding in enumerate(self.model.embeddings):
            staged = save_embedding(
                staging / f"{embedding.file_stem}{suffix}",
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
                    **run_model_spec(self.config, embedding.file_stem),
                    "ti_trainer.init_word": embedding.init_word,
                },
            )
            problem = _mismatch(staged[0], self.model.vectors(index), saving.save_precision)
            if problem:  # the file on disk would not be the embedding: keep the previous one
                for path in staged:
                    path.unlink(missing_ok=True)
                self.run.error(
                    message=f"{self.run.path / staged[0].name}: not saved: {problem}",
                    hint="the previous file is kept; report this with the run's train.log",
                )
                continue
            paths = [move_into_place(path, self.run.path / path.name) for path in staged]
            for path in paths:
                self.run.checkpoint(step=step, path=str(path), format=saving.embedding_format)
                self.hub.upload(path)
            if index == 0:
                self.saved[step] = str(paths[0])
                if not suffix:
                    self.final_path = paths[0]
            written += paths
        with contextlib.suppress(OSError):
            staging.rmdir()
        return written

    def save_step_copy(self, step: int) -> None:
        """A numbered copy (save_every_n_steps). save_last_n_steps(_state) keep the copies (and
        state folders) of the last N steps, counted as sd-scripts counts them."""
        saving, suffix = self.config.saving, f"-step{step:08d}"
        self.step_copies.append(self.save_embedding(step, suffix))
        _keep_recent_steps(self.step_copies, step, saving.save_last_n_steps)
        self.save_state_if_asked(suffix)
        span = saving.save_last_n_steps_state or saving.save_last_n_steps
        if saving.save_state and span and self.run.writer:
            _prune_states(self.run.path, self.state_stem, r"-step(\d{8})", step - span)

    def save_epoch_copy(self, step: int, epoch: int) -> None:
        """A numbered copy (save_every_n_epochs), keeping the last save_last_n_epochs; state
        folders: the last save_last_n_epochs_state (or save_last_n_epochs)."""
        saving, suffix = self.config.saving, f"-{epoch:06d}"
        paths = self.save_embedding(step, suffix)
        _keep_last(self.epoch_copies, paths, saving.save_last_n_epochs)
        self.save_state_if_asked(suffix)
        keep = saving.save_last_n_epochs_state or saving.save_last_n_epochs
        if saving.save_state and keep and self.run.writer:
            oldest_kept = epoch - saving.save_every_n_epochs * keep + 1
            _prune_states(self.run.path, self.state_stem, r"-(\d{6})", oldest_kept)

    def save_now(self, step: int) -> None:
        """SAVE_NOW: the final file as it stands (and the state)."""
        self.save_embedding(step)
        self.save_state_if_asked()

    # --- the end of a run -----------------------------------------------------------------
    def save_final(self, step: int) -> None:
        self.run.status("saving")
        self.save_now(step)

    def finish(self, step: int, reason: str) -> Path:
        """The done event (after save_final): how the run ended and its final file. Before it,
        with save_state or save_state_on_train_end, the state as sd-scripts' <name>-state too."""
        if self.config.saving.save_state or self.config.saving.save_state_on_train_end:
            self.copy_state(self.save_state(), "")
        self.hub.finish()  # the run is done when its uploads are
        self.run.done(reason=reason, path=str(self.final_path))
        log.info("%s at step %d: %s", reason, step, self.final_path)
        return self.final_path  # type: ignore[return-value]

    def remember_good(self) -> None:
        """After an optimizer step: a copy of the vectors and optimizer state to roll back to.
        It becomes the good one at the next read_loss, if the vectors were finite (a finite
        loss can still give an update that overflows): no read to the host here."""
        vectors = [tokens.vectors.detach() for tokens in self.model.tokens]
        self.pending = {
            "vectors": [v.clone() for v in vectors],
            "optimizer": _copied(self.optimizer.state_dict()),
            "finite": torch.stack([torch.isfinite(v).all() for v in vectors]).all(),
        }

    def read_loss(self, loss: torch.Tensor) -> float:
        """The step's one read to the host: the loss, and with it whether the last update left
        the vectors finite (then its copy is the one to roll back to)."""
        if self.pending is None:
            return float(loss)
        finite = self.pending.pop("finite").to(loss.device, torch.float32)
        value, vectors_finite = torch.stack([loss.float().reshape(()), finite]).tolist()
        if vectors_finite:
            self.good = self.pending
        self.pending = None
        return value

    def roll_back(self, step: int, loss: float) -> bool:
        """A non-finite loss: back to the last good vectors and optimizer state, with half the
        learning rate, and on (True); after MAX_ROLLBACKS of them, False (the run then fails,
        keeping the last good file)."""
        if self.good is None or self.rollbacks >= MAX_ROLLBACKS:
            return False
        self.rollbacks += 1
        with torch.no_grad():
            for tokens, vectors in zip(self.model.tokens, self.good["vectors"], strict=True):
                tokens.vectors.copy_(vectors)
        self.optimizer.load_state_dict(copy.deepcopy(self.good["optimizer"]))
        self.optimizer.zero_grad(set_to_none=True)
        for group in self.optimizer.param_groups:
            group["lr"] /= 2
        if hasattr(self.lr_schedule, "base_lrs"):
            self.lr_schedule.base_lrs = [rate / 2 for rate in self.lr_schedule.base_lrs]
        log.warning(
            "the loss became %s at step %d: back to the last good vectors with half the "
            "learning rate (%d of %d roll-backs)", loss, step + 1, self.rollbacks, MAX_ROLLBACKS,
        )  # fmt: skip
        return True

    def fail_non_finite(self, step: int, loss: float) -> TiError:
        """Save and record the failure; the vectors still hold the last good step (the bad one
        was never applied). Returns the error for the loop to raise."""
        self.save_embedding(step)
        message = f"the loss became {loss} at step {step + 1}"
        message += f" after {self.rollbacks} roll-backs" if self.rollbacks else ""
        message += "; training stopped"
        hint = (
            "lower the learning rate, or use mixed_precision = bf16 / no_half_vae "
            "(fp16 overflows); the embedding of the last good step is saved"
        )
        self.run.error(message=message, hint=hint)
        self.hub.finish()
        self.run.done(reason="failed", path=str(self.final_path))
        failure = TiError(f"{message}; {hint}")
        failure.recorded_in_run = True  # type: ignore[attr-defined]
        return failure

    # --- resumable state --------------------------------------------------------------------
    def save_state_if_asked(self, copy: str = "") -> None:
        """save_state: state/ (what --resume and the GUI's Resume pick up); with a numbered
        copy (`copy`: its suffix, -step00000500 or -000002) also <name><copy>-state."""
        if self.config.saving.save_state:
            latest = self.save_state()
            if copy:
                self.copy_state(latest, copy)

    @property
    def state_stem(self) -> str:
        """sd-scripts names state folders after output_name: the first embedding's file."""
        return self.model.embeddings[0].file_stem

    def copy_state(self, latest: Path, copy: str) -> None:
        """state/ as sd-scripts' state folder <name><copy>-state (<name>-state at the end)."""
        if self.run.writer:
            target = self.run.path / f"{self.state_stem}{copy}-state" / STATE_FILE
            with atomic_path(target) as temporary:
                shutil.copyfile(latest / STATE_FILE, temporary)
            self.hub.upload(target.parent, state=True)  # save_state_to_huggingface

    def save_state(self) -> Path:
        folder = self.run.path / STATE_DIR
        self._read_averaged()
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
        saving = self.config.saving
        from_hub = saving.resume_from_huggingface
        folder = self.hub.download_state(saving.resume) if from_hub else Path(saving.resume)
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

    def _read_averaged(self) -> None:
        """Before the vectors are read: a schedule-free optimizer's averaged point (the loop's
        next step puts it back in train mode)."""
        from ti_core.training.optim import optimizer_eval_mode

        if self.optimizer is not None:
            optimizer_eval_mode(self.optimizer)

    # --- samples ------------------------------------------------------------------------------
    def sample(self, step: int) -> None:
        from ti_core.training.samples import make_training_samples

        if not self.run.writer:
            return
        if not self.config.sampling.sample_prompts:
            log.warning("no sample images at step %d: set sample_prompts (a prompts file)", step)
            return
        self._read_averaged()
        self.run.status("sampling")
        try:
            for path, prompt in make_training_samples(self.config, self.model, step):
                self.run.sample(step=step, path=str(path), prompt=prompt)
        except Exception as error:  # noqa: BLE001 - a failed sample must not end the run
            log.warning("sample images at step %d failed: %s", step, error)
        self.run.status("training")


def _mismatch(path: Path, vectors: list[torch.Tensor], save_precision: str) -> str:
    """Why the file just written does not hold `vectors` ("" when it does): read back through
    our own reader, every text encoder present, shapes equal, values within the precision."""
    from ti_core.embeddings.files import read_embedding

    try:
        found = read_embedding(path).vectors
    except Exception as error:  # noqa: BLE001 - whatever the reader says, the file is bad
        return f"it cannot be read back ({error})"
    if len(found) != len(vectors):
        return f"it holds {len(found)} text encoder(s)' vectors, the model has {len(vectors)}"
    tolerance = {"float": 1e-6, "fp16": 1e-3, "bf16": 1e-2}[save_precision]
    for index, (read, held) in enumerate(zip(found, vectors, strict=True)):
        if tuple(read.shape) != tuple(held.shape):
            return f"encoder {index}: shape {tuple(read.shape)}, expected {tuple(held.shape)}"
        if not torch.allclose(read.float(), held.float(), rtol=tolerance, atol=tolerance):
            return f"encoder {index}: the values differ from the vectors in memory"
    return ""


def _copied(value: Any) -> Any:
    """A copy of a state dict: tensors cloned (on their device), containers rebuilt."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {key: _copied(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_copied(item) for item in value)
    return copy.deepcopy(value)


def epochs_between_copies(saving: Any, num_epochs: int) -> int:
    """save_every_n_epochs, or with save_n_epoch_ratio N, epochs / N (at least 1) as sd-scripts
    sets it: about N epoch copies in all."""
    if not saving.save_n_epoch_ratio:
        return saving.save_every_n_epochs
    return max(num_epochs // saving.save_n_epoch_ratio, 1)


def every(count: int, interval: int) -> bool:
    """Whether periodic work set to every `interval` steps/epochs is due at `count` (0 = off)."""
    return bool(interval) and count % interval == 0


def _keep_recent_steps(copies: list[list[Path]], step: int, span: int) -> None:
    """sd-scripts' save_last_n_steps: the copies saved within the last `span` steps stay (the
    one exactly `span` steps back included); older ones go."""
    if not span:
        return
    for paths in [paths for paths in copies if paths]:
        saved_at = int(re.findall(r"-step(\d{8})", paths[0].name)[-1])
        if saved_at < step - span:
            copies.remove(paths)
            for old in paths:
                old.unlink(missing_ok=True)


def _prune_states(folder: Path, stem: str, number: str, oldest_kept: int) -> None:
    """Delete the state folders <stem><number>-state whose number is below oldest_kept."""
    pattern = re.compile(rf"{re.escape(stem)}{number}-state")
    for path in folder.iterdir():
        match = pattern.fullmatch(path.name)
        if match and path.is_dir() and int(match.group(1)) < oldest_kept:
            shutil.rmtree(path, ignore_errors=True)


def _keep_last(copies: list[list[Path]], paths: list[Path], keep: int) -> None:
    copies.append(paths)
    while keep and len(copies) > keep:
        for old in copies.pop(0):
            old.unlink(missing_ok=True)
