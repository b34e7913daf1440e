"""From the run config to what a training step eats: the datasets (checked by the doctor before
any model work), the caption each step sees, and the batches. --debug_dataset lives here too.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ti_core.config.run_config import Config
from ti_core.data.buckets import BucketRules
from ti_core.data.captions import (
    caption_has_token,
    prepend_token,
    process_caption,
    template_captions,
)
from ti_core.data.dataset_toml import load_dataset_config, run_values
from ti_core.data.doctor import DatasetReport, check_datasets
from ti_core.data.sources import datasets_from_args
from ti_core.data.spec import DatasetSpec, ImageEntry
from ti_core.embeddings.specs import embedding_specs
from ti_core.errors import DatasetError

log = logging.getLogger(__name__)

MakeCaption = Callable[[ImageEntry, int, random.Random], str]


def dataset_specs(config: Config) -> list[DatasetSpec]:
    """The datasets a run trains on: the dataset TOML, else train_data_dir / in_json folders.
    Run options fill what a dataset TOML leaves unset, as in sd-scripts."""
    data = config.dataset
    if data.dataset_config:
        return load_dataset_config(data.dataset_config, defaults=run_values(data))
    if not data.train_data_dir and not data.in_json:
        raise DatasetError(
            "No images to train on: set dataset_config (an sd-scripts dataset TOML) or "
            "train_data_dir (a folder of N_name subfolders)."
        )
    return datasets_from_args(data, train_data_dir=resolve_demo_dataset(data.train_data_dir))


def resolve_demo_dataset(train_data_dir: str) -> str:
    """demo:FAMILY names the demo's synthetic dataset (built on first use, like its model)."""
    if not train_data_dir.startswith("demo:"):
        return train_data_dir
    from ti_core.models.demo import demo_dir

    return str(demo_dir(train_data_dir.removeprefix("demo:")) / "dataset")


def check_data(config: Config, family: str = "sd1") -> tuple[list[DatasetSpec], DatasetReport]:
    """Run the dataset doctor over the run's datasets (reads every image once)."""
    specs = dataset_specs(config)
    rules = {id(spec): BucketRules(spec) for spec in specs}
    report = check_datasets(
        specs,
        [embedding.token_string for embedding in embedding_specs(config)],
        uses_templates(config),
        bucket_of=lambda size, spec: rules[id(spec)].choose(size).bucket,
        reso_steps_multiple=32 if family == "sdxl" else 64,
        add_missing_token=config.dataset.add_missing_token,
    )
    return specs, report


def require_clean(report: DatasetReport) -> None:
    """Stop before any model work when the doctor found errors; list them all at once."""
    for problem in report.warnings:
        log.warning("%s: %s%s", problem.path or problem.where, problem.message,
                    f" ({problem.detail})" if problem.detail else "")  # fmt: skip
    if not report.ok:
        raise DatasetError("the dataset has problems:\n" + report.to_text())


def uses_templates(config: Config) -> bool:
    return config.dataset.use_object_template or config.dataset.use_style_template


def caption_maker(config: Config, expand: Callable[[str], str]) -> MakeCaption:
    """The caption a step trains on: sd-scripts' caption processing (prefix/suffix, dropout,
    shuffle, templates), the token put in front when asked, then the token string expanded to
    its N vectors' words (`expand`). Templates, and the token put in front of a caption that
    has none of the run's tokens, use the first embedding's token string."""
    tokens = [embedding.token_string for embedding in embedding_specs(config)]
    token_string = tokens[0]
    templates = None
    if uses_templates(config):
        templates = template_captions(token_string, style=config.dataset.use_style_template)

    def make_caption(entry: ImageEntry, epoch: int, rng: random.Random) -> str:
        caption = process_caption(entry.caption, entry.subset, epoch, rng, templates=templates)
        lacks_token = caption and not any(caption_has_token(caption, t) for t in tokens)
        if lacks_token and config.dataset.add_missing_token and not entry.subset.is_reg:
            separator = entry.subset.caption_separator.strip() + " "
            caption = prepend_token(caption, token_string, separator)
        return expand(caption)

    return make_caption


@dataclass
class DebugLine:
    path: str
    bucket: tuple[int, int]
    caption: str
    input_ids: Any  # torch.Tensor (chunks, 77)


def print_debug_dataset(lines: list[DebugLine], print_line: Callable[[str], None]) -> None:
    """sd-scripts' --debug_dataset output: what each image trains with, ids as a tensor."""
    for line in lines:
        width, height = line.bucket
        print_line(f"image: {line.path}")
        print_line(f"bucket: {width}x{height}")
        print_line(f"caption: {line.caption}")
        print_line(f"input ids: {line.input_ids}")
        print_line("")


def train_images(
    specs: list[DatasetSpec], entries: list[list[ImageEntry]] | None = None
) -> list[tuple[DatasetSpec, list[Any]]]:
    """Each dataset with its images sized, bucketed and repeated. `entries`: what the doctor
    already found (sizes read), so training does not search and open every image again."""
    from ti_core.data.batches import prepare_images
    from ti_core.data.sources import discover_images

    if not entries:
        entries = [discover_images(spec)[0] for spec in specs]
    return [(spec, prepare_images(found, spec)) for spec, found in zip(specs, entries, strict=True)]


def debug_dataset(
    config: Config,
    specs: list[DatasetSpec],
    expand: Callable[[str], str],
    tokenizer: Any,
    max_batches: int = 4,
    entries: list[list[ImageEntry]] | None = None,
) -> list[DebugLine]:
    """The first batches as training would make them, with their input ids (--debug_dataset)."""
    from ti_core.data.batches import EpochBatches
    from ti_core.embeddings.tokens import tokenize_captions

    datasets = train_images(specs, entries)
    batches = EpochBatches(datasets, caption_maker(config, expand), seed=config.training.seed)
    lines, truncated = [], 0
    for index in range(min(max_batches, len(batches))):
        batch = batches[index]
        tokenized = tokenize_captions(tokenizer, batch["captions"], config.model.max_token_length)
        truncated += tokenized.num_truncated
        for path, caption, ids in zip(
            batch["paths"], batch["captions"], tokenized.input_ids, strict=True
        ):
            lines.append(DebugLine(path, batch["bucket"], caption, ids))
    if truncated:
        log.warning(
            "%d caption(s) are longer than max_token_length = %d tokens and were cut; "
            "raise max_token_length (150 or 225) or shorten them.",
            truncated,
            config.model.max_token_length,
        )
    return lines
