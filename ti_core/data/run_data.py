"""From the run config to what a training step eats: the datasets (checked by the doctor before
any model work), the caption each step sees, and the batches. --debug_dataset lives here too.
"""

from __future__ import annotations

import logging
import math
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
from ti_core.data.doctor import DatasetReport, check_datasets
from ti_core.data.sources import run_datasets
from ti_core.data.spec import DatasetSpec, ImageEntry, Problem
from ti_core.embeddings.specs import embedding_specs
from ti_core.errors import DatasetError

log = logging.getLogger(__name__)

MakeCaption = Callable[..., str]  # (entry, epoch, rng, step=None, max_train_steps=0) -> caption


def dataset_specs(config: Config) -> list[DatasetSpec]:
    """The datasets a run trains on (sources.run_datasets), the demo's built on first use."""
    return run_datasets(config.dataset, resolve_demo_dataset)


def resolve_demo_dataset(train_data_dir: str) -> str:
    """demo:FAMILY names the demo's synthetic dataset (built on first use, like its model)."""
    if not train_data_dir.startswith("demo:"):
        return train_data_dir
    from ti_core.models.demo import demo_dir

    return str(demo_dir(train_data_dir.removeprefix("demo:")) / "dataset")


def check_data(config: Config, family: str = "sd1") -> tuple[list[DatasetSpec], DatasetReport]:
    """Run the dataset doctor over the run's datasets (reads every image once, unless every
    subset has cache_info: then, as in sd-scripts, the folders are trusted unopened)."""
    if config.dataset.dataset_class:  # the user's class makes the batches: no folders to read
        return [], dataset_class_report(config)
    specs = dataset_specs(config)
    rules = {id(spec): BucketRules(spec) for spec in specs}
    trusted = all(subset.cache_info and not subset.metadata_file
                  for spec in specs for subset in spec.subsets)  # fmt: skip
    if trusted:
        log.info("cache_info: image sizes from each folder's metadata_cache.json; the images "
                 "are not opened before training")  # fmt: skip
    report = check_datasets(
        specs,
        [embedding.token_string for embedding in embedding_specs(config)],
        uses_templates(config),
        bucket_of=lambda size, spec: rules[id(spec)].choose(size).bucket,
        reso_steps_multiple=32 if family == "sdxl" else 64,
        add_missing_token=config.dataset.add_missing_token,
        read_images=not trusted,
    )
    return specs, report


def dataset_class_report(config: Config) -> DatasetReport:
    """The doctor's report for a dataset_class run: nothing it can read, said as a warning.
    (The class is imported by the training preflight, never here: the GUI reads reports.)"""
    ignored = [name for name in ("dataset_config", "train_data_dir", "reg_data_dir", "in_json")
               if getattr(config.dataset, name)]  # fmt: skip
    also = f"; {', '.join(ignored)} not used" if ignored else ""
    problem = Problem(
        "warning", "dataset_class", f"the images come from dataset_class "
        f"{config.dataset.dataset_class}{also}; the dataset doctor cannot check them",
        where="[dataset]",
    )  # fmt: skip
    tokens = [embedding.token_string for embedding in embedding_specs(config)]
    return DatasetReport(tokens, uses_templates(config), [], [], [problem])


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
    wildcards, tag warm-up at `step` of `max_train_steps`, shuffle, templates), the token put
    in front when asked, then the token string expanded to its N vectors' words (`expand`).
    Templates, and the token put in front of a caption that has none of the run's tokens, use
    the first embedding's token string."""
    tokens = [embedding.token_string for embedding in embedding_specs(config)]
    token_string = tokens[0]
    templates = None
    if uses_templates(config):
        templates = template_captions(token_string, style=config.dataset.use_style_template)

    def make_caption(
        entry: ImageEntry,
        epoch: int,
        rng: random.Random,
        step: int | None = None,
        max_train_steps: int = 0,
    ) -> str:
        caption = process_caption(
            entry.caption, entry.subset, epoch, rng, templates=templates,
            step=step, max_train_steps=max_train_steps,
        )  # fmt: skip
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

    if config.dataset.dataset_class:
        raise DatasetError(
            f"debug_dataset shows the batches of image folders; dataset_class "
            f"{config.dataset.dataset_class} makes its own (sd-scripts passes debug_dataset to "
            "the class: it may show them itself). Remove debug_dataset to train."
        )
    datasets = train_images(specs, entries)
    batches = EpochBatches(datasets, caption_maker(config, expand), seed=config.training.seed)
    # the first batches' captions as the first steps see them (token_warmup_step)
    accumulation = config.training.gradient_accumulation_steps
    steps_per_epoch = math.ceil(len(batches) / accumulation)
    max_steps = config.training.max_train_epochs * steps_per_epoch
    batches.count_steps(accumulation, max_steps or config.training.max_train_steps)
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
