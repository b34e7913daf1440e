"""The Hugging Face Hub side of a run (sd-scripts' huggingface_* options): every embedding file
the run saves, and with save_state_to_huggingface every numbered state folder, is uploaded to
huggingface_repo_id, in order, in the background with async_upload; resume_from_huggingface
downloads the state to resume from. `check_hub` (preflight) proves, before any model work,
that the Hub can be reached with the token; a failed upload later is a warning, and training
goes on, as in sd-scripts.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ti_core.errors import ConfigError, TiError

log = logging.getLogger(__name__)

REMOTE_STATE_FORM = "repo_id/path_in_repo[:revision[:repo_type]]"


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as huggingface_hub reads it."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


@dataclass(frozen=True)
class RemoteState:
    """A state folder on the Hub, as sd-scripts' --resume names it with resume_from_huggingface."""

    repo_id: str
    path_in_repo: str
    revision: str | None = None
    repo_type: str | None = None


def parse_remote_state(resume: str) -> RemoteState:
    """repo_id/path_in_repo[:revision[:repo_type]] (sd-scripts' form; a revision alone means
    a model repository)."""
    location, *rest = resume.strip().split(":")
    parts = [part for part in location.split("/") if part]
    if len(parts) < 2 or len(rest) > 2:
        raise ConfigError(
            f"[saving] resume = {resume!r}: with resume_from_huggingface, resume names a state "
            f"on the Hub as {REMOTE_STATE_FORM}, e.g. me/runs/mychar4-state:main:model."
        )
    revision = (rest[0] or None) if rest else None
    repo_type = (rest[1] or None) if len(rest) == 2 else ("model" if rest else None)
    return RemoteState("/".join(parts[:2]), "/".join(parts[2:]), revision, repo_type)


def check_hub(saving: Any) -> None:
    """Preflight: the Hub options make sense together, and when the run uploads or resumes
    from the Hub, it is reachable (not offline) and the token is accepted."""
    uploads, resumes = bool(saving.huggingface_repo_id), saving.resume_from_huggingface
    if saving.save_state_to_huggingface and not uploads:
        raise ConfigError(
            "[saving] save_state_to_huggingface = true uploads to huggingface_repo_id, which "
            "is empty; set it (user/name), or turn save_state_to_huggingface off."
        )
    if resumes and not saving.resume:
        raise ConfigError(
            "[saving] resume_from_huggingface = true reads the state that resume names, which "
            f"is empty; set resume = {REMOTE_STATE_FORM}, or turn resume_from_huggingface off."
        )
    if saving.async_upload and not uploads:
        log.warning("async_upload has no effect without huggingface_repo_id (nothing uploads).")
    if not uploads and not resumes:
        return
    what = (
        f"huggingface_repo_id = {saving.huggingface_repo_id!r}"
        if uploads
        else f"resume_from_huggingface (resume = {saving.resume!r})"
    )
    if hub_offline():
        raise ConfigError(
            f"[saving] {what} needs the Hugging Face Hub, but HF_HUB_OFFLINE is set: this run "
            "may not go online. Unset HF_HUB_OFFLINE, or remove the huggingface options to "
            "train without the Hub."
        )
    api = _api(saving.huggingface_token)
    try:
        if uploads:
            api.whoami()  # the token, checked before minutes of loading and training
        if resumes:
            remote = parse_remote_state(saving.resume)
            api.repo_info(remote.repo_id, revision=remote.revision, repo_type=remote.repo_type)
    except TiError:
        raise
    except Exception as error:  # noqa: BLE001 - every failure here means: no Hub for this run
        raise ConfigError(f"[saving] {what}: {_hub_problem(error)}") from None


def _hub_problem(error: Exception) -> str:
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if isinstance(error, LocalTokenNotFoundError):
        return (
            "no Hugging Face token: set huggingface_token (a token with write access), or "
            "HF_TOKEN, or log in with `hf auth login`."
        )
    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, HfHubHTTPError) and status == 401:
        return f"the Hub did not accept the token ({first_line}); check huggingface_token."
    if isinstance(error, HfHubHTTPError) and status == 404:
        return f"not found on the Hub ({first_line}); check the repository, path and revision."
    return (
        f"cannot reach the Hugging Face Hub at {hub_endpoint()} ({first_line}). Check the "
        "network (or HF_ENDPOINT), or remove the huggingface options to train without it."
    )


def _api(token: str) -> Any:
    from huggingface_hub import HfApi

    return HfApi(endpoint=hub_endpoint(), token=token or None)


class HubUploads:
    """One run's uploads. Built before the run writes config.toml: it takes huggingface_token
    out of the config, so the token is never written into the run folder (like wandb_api_key).
    `writer`: only the first process of a data-parallel run uploads."""

    def __init__(self, config: Any, writer: bool = True) -> None:
        saving = config.saving
        self.token, saving.huggingface_token = saving.huggingface_token, ""
        self.repo_id = saving.huggingface_repo_id if writer else ""
        self.repo_type = saving.huggingface_repo_type or None
        self.path_in_repo = saving.huggingface_path_in_repo.strip("/")
        self.private = saving.huggingface_repo_visibility != "public"  # sd-scripts' default
        self.states_too = saving.save_state_to_huggingface
        self._background = ThreadPoolExecutor(1) if saving.async_upload and self.repo_id else None
        self._pending: list[Future] = []
        self._repo_ready = False

    def upload(self, path: Path, state: bool = False) -> None:
        """Upload a saved file or state folder (state: only with save_state_to_huggingface)."""
        if not self.repo_id or (state and not self.states_too):
            return
        target = "/".join(part for part in (self.path_in_repo, path.name) if part)
        if self._background is None:
            self._upload(path, target)
        else:
            self._pending.append(self._background.submit(self._upload, path, target))

    def finish(self) -> None:
        """Wait for the background uploads (the end of the run waits, as sd-scripts' last
        upload does)."""
        for pending in self._pending:
            pending.result()
        self._pending.clear()

    def _upload(self, path: Path, target: str) -> None:
        try:
            api = _api(self.token)
            if not self._repo_ready:
                api.create_repo(self.repo_id, repo_type=self.repo_type, private=self.private,
                                exist_ok=True)  # fmt: skip
                self._repo_ready = True
            where = {"repo_id": self.repo_id, "repo_type": self.repo_type, "path_in_repo": target}
            if path.is_dir():
                api.upload_folder(folder_path=str(path), **where)
            else:
                api.upload_file(path_or_fileobj=str(path), **where)
            log.info("uploaded %s to the Hub: %s/%s", path.name, self.repo_id, target)
        except Exception as error:  # noqa: BLE001 - as in sd-scripts, training goes on
            log.warning("uploading %s to the Hub (%s) failed: %s", path.name, self.repo_id,
                        _hub_problem(error))  # fmt: skip

    def download_state(self, resume: str) -> Path:
        """resume_from_huggingface: the state folder `resume` names, downloaded (to the Hub's
        cache); what the local resume then reads."""
        from huggingface_hub import snapshot_download

        remote = parse_remote_state(resume)
        pattern = [f"{remote.path_in_repo}/*"] if remote.path_in_repo else None
        try:
            root = snapshot_download(
                remote.repo_id, repo_type=remote.repo_type, revision=remote.revision,
                allow_patterns=pattern, token=self.token or None, endpoint=hub_endpoint(),
            )  # fmt: skip
        except Exception as error:  # noqa: BLE001 - one message for every way it fails
            raise TiError(f"resume = {resume}: {_hub_problem(error)}") from error
        log.info("resuming from the Hub: %s", resume)
        return Path(root) / remote.path_in_repo
