"""The command line: python -m ti_core {train,generate,compare,convert,serve,make-demo,...}.

User mistakes print as one line and exit with code 2; --debug shows the traceback too.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from ti_core.cli.generation import GENERATION_COMMANDS, add_generation_commands
from ti_core.config.run_config import Config, ConfigError, SavingConfig
from ti_core.config.toml_io import (
    add_config_arguments,
    apply_cli_overrides,
    config_to_toml,
    load_config,
    save_config,
)
from ti_core.errors import TiError

log = logging.getLogger("ti_core")
USER_ERROR_EXIT = 2
DATASET_PROBLEMS_EXIT = 1  # check-dataset ran fine and found errors in the data
CONSOLE_FORMAT = "%(levelname)s: %(message)s"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ti_core",
        description="Textual Inversion for Stable Diffusion 1.x, 2.x and SDXL.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="train an embedding from a config file and/or flags",
        description="Flags override the config file; every config key is a flag.",
    )
    _add_config_file_argument(train)
    add_config_arguments(train)

    show = commands.add_parser(
        "print-config", help="print the resolved config (file + flags) as TOML"
    )
    _add_config_file_argument(show)
    add_config_arguments(show)

    doctor = commands.add_parser(
        "check-dataset",
        help="the dataset doctor: images, repeats, steps per epoch, buckets, every problem",
        description="Exit code 0: ready to train; 1: the data has errors; 2: bad config.",
    )
    _add_config_file_argument(doctor)
    doctor.add_argument("--json", action="store_true", help="machine-readable report")
    add_config_arguments(doctor)

    convert = commands.add_parser(
        "convert", help="convert an embedding file between kohya, a1111 and diffusers layouts"
    )
    convert.add_argument(
        "embedding", help="any embedding file (sd-scripts, AUTOMATIC1111, diffusers)"
    )
    convert.add_argument("--to", required=True, choices=("kohya", "a1111", "diffusers"))
    convert.add_argument("--out", help="output file or folder (default: beside the input)")

    inspect = commands.add_parser(
        "inspect-model", help="say what a model is (family, prediction type) and that it loads"
    )
    inspect.add_argument("model", help="diffusers folder, .safetensors/.ckpt file, or demo:sd1")
    inspect.add_argument("--v2", action="store_true", help="as in sd-scripts")
    inspect.add_argument("--v_parameterization", action="store_true", help="as in sd-scripts")
    inspect.add_argument("--no-load", action="store_true", help="only read the file's header")

    add_generation_commands(commands)

    demo = commands.add_parser(
        "make-demo", help="build a tiny random model and a synthetic dataset (no download)"
    )
    demo.add_argument("--out", type=Path, help="folder to write (default: the demo cache)")
    demo.add_argument("--family", choices=("sd1", "sd2", "sdxl"), default="sd1")
    demo.add_argument("--force", action="store_true", help="rebuild even if it exists")
    return parser


def _add_config_file_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        "--config_file",
        dest="config_file",
        metavar="FILE",
        help="TOML config: ours (sections) or an sd-scripts --config_file (flat)",
    )


def resolve_config(args: argparse.Namespace) -> Config:
    config = load_config(args.config_file) if args.config_file else Config()
    return apply_cli_overrides(config, args)


def command_train(args: argparse.Namespace) -> int:
    from ti_core.training.preflight import preflight
    from ti_core.training.trackers import check_trackers

    if getattr(args, "output_config", False):
        return write_output_config(args)
    config = resolve_config(args)
    if config.saving.output_config:
        raise ConfigError(
            f"{args.config_file}: output_config = true: it writes the options to the "
            "--config_file path and so needs a file that does not exist yet; remove the key "
            "and pass --output_config with a new --config_file instead."
        )
    with console_logging(config.saving):
        check_trackers(config)
        specs, report = preflight(config)
        if config.dataset.debug_dataset:
            return show_debug_dataset(config, specs, report.entries)
        return run_training(config, specs, report.entries)


def write_output_config(args: argparse.Namespace) -> int:
    """--output_config (sd-scripts): the flags' options written to the --config_file path,
    which must not exist yet (".toml" added when missing); nothing is trained."""
    if not args.config_file:
        raise ConfigError(
            "--output_config writes the options to the --config_file path: add "
            "--config_file NEW.toml."
        )
    path = Path(args.config_file)
    path = path if path.suffix == ".toml" else path.with_name(path.name + ".toml")
    if path.exists():
        raise ConfigError(
            f"--output_config: {path} exists already and is not overwritten; name a new file "
            "with --config_file."
        )
    config = apply_cli_overrides(Config(), args)
    config.saving.output_config, config.saving.wandb_api_key = False, ""  # the key stays out
    save_config(config, path)
    print(f"wrote {path}; train it with: python -m ti_core train --config {path}")
    return 0


@contextlib.contextmanager
def console_logging(saving: SavingConfig) -> Iterator[None]:
    """console_log_level and console_log_file (sd-scripts) for one train command: the lowest
    level shown, and a file that takes the messages instead of the terminal. train.log and
    events.jsonl are not affected."""
    root, ours = logging.getLogger(), logging.getLogger("ti_core")
    level = getattr(logging, saving.console_log_level or "INFO")
    terminal = [h for h in root.handlers if getattr(h, "stream", None) in (sys.stderr, sys.stdout)]
    old_levels = [(handler, handler.level) for handler in terminal]
    old_level, added = ours.level, None
    if saving.console_log_file:
        Path(saving.console_log_file).parent.mkdir(parents=True, exist_ok=True)
        added = logging.FileHandler(saving.console_log_file, mode="w", encoding="utf-8")
        added.setFormatter(logging.Formatter(CONSOLE_FORMAT))
        added.setLevel(level)
        for handler in terminal:
            root.removeHandler(handler)
        root.addHandler(added)
    for handler in terminal if saving.console_log_level else []:
        handler.setLevel(level)
    if level < logging.INFO:
        ours.setLevel(level)
    if saving.console_log_simple:  # sd-scripts' switch away from rich's coloured lines
        ours.info("console_log_simple: the console lines here are plain already")
    try:
        yield
    finally:
        ours.setLevel(old_level)
        for handler, handler_level in old_levels:
            handler.setLevel(handler_level)
        if added:
            root.removeHandler(added)
            added.close()
            for handler in terminal:
                root.addHandler(handler)


def run_training(config: Config, specs: list, entries: list) -> int:
    """Train inside the run folder; a failure is still recorded there (error + done events)."""
    from ti_core.run_folder.writer import RunFolder
    from ti_core.training.distributed import join_team, leave_team
    from ti_core.training.loop import train
    from ti_core.training.trackers import close_trackers, log_in_to_wandb

    # The key logs in at start and is never written to the run folder's config.toml.
    api_key, config.saving.wandb_api_key = config.saving.wandb_api_key, ""
    team = join_team(config.training.ddp_timeout)
    if not team.is_main:  # the first process logs for the team; the others only complain
        logging.getLogger("ti_core").setLevel(logging.WARNING)
    with RunFolder(config.saving.output_dir, writer=team.is_main) as run:
        run.clear_stale_flags()
        run.attach_logging()
        run.install_stop_signals()
        try:
            if team.is_main:
                log_in_to_wandb(config, api_key)
            train(config, specs, run, entries, team)
        except TiError as error:
            if not getattr(error, "recorded_in_run", False):
                run.error(message=str(error), hint="")
                run.done(reason="failed")
            raise
        except KeyboardInterrupt:
            # A second Ctrl+C / SIGTERM: end at once; saved files are whole (atomic writes).
            run.done(reason="stopped")
            return 130
        except Exception as error:
            run.error(message=f"{type(error).__name__}: {error}", hint="see train.log")
            run.done(reason="failed")
            log.exception("training failed")
            return 1
        finally:
            close_trackers()
            leave_team(team)
    return 0


def show_debug_dataset(config: Config, specs: list, entries: list) -> int:
    """--debug_dataset: load the model and tokens, print the first batches, train nothing."""
    import torch

    from ti_core.data.buckets import check_bucket_reso_steps
    from ti_core.data.run_data import debug_dataset, print_debug_dataset
    from ti_core.embeddings.specs import embedding_specs
    from ti_core.embeddings.tokens import add_embeddings, expand_all, text_parts
    from ti_core.models.loading import load_model

    model = config.model
    loaded = load_model(
        model.pretrained_model_name_or_path, model.v2, model.v_parameterization, model.vae
    )
    for spec in specs:
        check_bucket_reso_steps(spec, loaded.family)
    tokenizers, text_encoders = text_parts(loaded.pipeline)
    placeholders = add_embeddings(
        tokenizers,
        text_encoders,
        embedding_specs(config),
        generator=torch.Generator().manual_seed(config.training.seed),
    )

    def expand(caption: str) -> str:
        return expand_all(placeholders, caption)

    lines = debug_dataset(config, specs, expand, tokenizers[0], entries=entries)
    print_debug_dataset(lines, print)
    return 0


def command_check_dataset(args: argparse.Namespace) -> int:
    from ti_core.data.run_data import check_data
    from ti_core.training.preflight import family_hint

    config = resolve_config(args)
    family = family_hint(config.model.pretrained_model_name_or_path) or "sdxl"
    _, report = check_data(config, family)
    print(report.to_json() if args.json else report.to_text())
    return 0 if report.ok else DATASET_PROBLEMS_EXIT


def command_print_config(args: argparse.Namespace) -> int:
    sys.stdout.write(config_to_toml(resolve_config(args)))
    return 0


def command_inspect_model(args: argparse.Namespace) -> int:
    from ti_core.models.loading import inspect_model, load_model

    info = inspect_model(args.model)
    print(f"{args.model}: {info.describe()} (prediction type from {info.evidence})")
    if not args.no_load:
        loaded = load_model(args.model, args.v2, args.v_parameterization)
        print(f"loads as {loaded.describe()}")
    return 0


def command_convert(args: argparse.Namespace) -> int:
    from ti_core.embeddings.writers import convert_embedding

    for path in convert_embedding(args.embedding, args.to, args.out):
        print(f"wrote {path}")
    return 0


def command_make_demo(args: argparse.Namespace) -> int:
    from ti_core.models.demo import cache_root, make_demo

    out = args.out or cache_root() / "demo" / args.family
    make_demo(out, args.family, force=args.force)
    print(f"demo {args.family} model and dataset in {out}")
    print(f"  model folder: {out / 'model'}\n  single file:  {out / 'model.safetensors'}")
    print(f"  dataset:      {out / 'dataset'}")
    return 0


COMMANDS = {
    "train": command_train,
    "print-config": command_print_config,
    "check-dataset": command_check_dataset,
    "inspect-model": command_inspect_model,
    "make-demo": command_make_demo,
    "convert": command_convert,
    **GENERATION_COMMANDS,
}


def quiet_libraries() -> None:
    """Library chatter (progress bars per component, optional-backend notices) hides our own
    messages; their warnings about real problems still show."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    # Our own progress at INFO; libraries only when something is wrong.
    logging.basicConfig(level=logging.WARNING, format=CONSOLE_FORMAT, stream=sys.stderr)
    log.setLevel(logging.INFO)
    try:
        return COMMANDS[args.command](args)
    except TiError as error:
        if args.debug:
            log.exception("details")
        print(f"error: {error}", file=sys.stderr)
        return USER_ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main())
