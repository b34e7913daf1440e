"""The [saving] options that describe the files rather than when they are written: the SAI
model-spec metadata every .safetensors embedding carries, and the run's logs (TensorBoard,
wandb, the console). Named and defaulted as sd-scripts' flags; run_config.SavingConfig takes
them in, so they are [saving] keys and flags like any other.
"""

from __future__ import annotations

from dataclasses import dataclass

from ti_core.config.options import FILE, FOLDER, opt

# sd-scripts' metadata_* flags (library/sai_model_spec.py), each written as modelspec.<name>.
METADATA_NAMES = (
    "title", "author", "description", "license", "tags", "usage_hint", "thumbnail",
    "merged_from", "trigger_phrase", "preprocessor", "is_negative_embedding",
)  # fmt: skip
LOG_WITH = ("", "tensorboard", "wandb", "all")
CONSOLE_LOG_LEVELS = ("", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass
class ModelSpecOptions:
    """modelspec.* values written into every .safetensors embedding; empty ones are left out."""

    metadata_title: str = opt("", "Title in the file's metadata (default: the file name).")
    metadata_author: str = opt("", "Author in the file's metadata.")
    metadata_description: str = opt("", "Description in the file's metadata.")
    metadata_license: str = opt("", "License in the file's metadata (e.g. CreativeML OpenRAIL-M).")
    metadata_tags: str = opt("", "Tags in the file's metadata, separated by commas.")
    metadata_usage_hint: str = opt("", "A short hint on how to use the embedding.")
    metadata_thumbnail: str = opt(
        "", "Thumbnail: an image file (stored as a data URL) or a data: URL."
    )
    metadata_merged_from: str = opt("", "The models this one was merged from, if any.")
    metadata_trigger_phrase: str = opt(
        "", "Trigger phrase in the file's metadata (default: the file name, the trigger word)."
    )
    metadata_preprocessor: str = opt("", "Preprocessing the model expects, if any.")
    metadata_is_negative_embedding: str = opt(
        "", "Mark the embedding as one for negative prompts (e.g. true)."
    )


@dataclass
class RunLogOptions:
    """Where the run's logs go, besides train.log and events.jsonl (always written)."""

    logging_dir: str = opt(
        "",
        "Folder for TensorBoard/wandb logs; each run gets a subfolder named log_prefix + the "
        "start time. Setting it alone turns TensorBoard on.",
        path=FOLDER,
        made_by_run=True,
    )
    log_with: str = opt(
        "",
        "Log loss and learning rate per step to tensorboard, wandb or all (empty: tensorboard "
        "when logging_dir is set).",
        choices=LOG_WITH,
    )
    log_prefix: str = opt("", "Text in front of each run's log subfolder name.")
    log_tracker_name: str = opt(
        "", "Project name of the logs (default: textual_inversion; wandb's project)."
    )
    log_tracker_config: str = opt(
        "",
        "TOML file of extra tracker settings: a [tensorboard] and/or [wandb] table of keyword "
        "arguments for the writer / wandb.init.",
        path=FILE,
        suffixes=(".toml",),
    )
    log_config: bool = opt(
        False, "Also log the run's options (without paths and keys) to the trackers."
    )
    wandb_run_name: str = opt("", "Name of the run in wandb.")
    wandb_api_key: str = opt(
        "", "wandb API key to log in with at start (never written to the run's config.toml)."
    )
    console_log_level: str = opt(
        "", "Lowest level of messages shown (empty: INFO).", choices=CONSOLE_LOG_LEVELS
    )
    console_log_file: str = opt(
        "",
        "Write the console's log messages to this file instead of the terminal.",
        path=FILE,
        suffixes=(".log", ".txt"),
        made_by_run=True,
    )
    console_log_simple: bool = opt(
        False, "Plain log lines (ours always are; accepted for sd-scripts command lines)."
    )
