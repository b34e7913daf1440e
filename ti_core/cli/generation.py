"""The command line's image side: generate, compare (a run's checkpoints as one grid),
inspect, and serve (the GUI's generation worker). Option names follow gen_img_diffusers."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ti_core.errors import TiError
from ti_core.generation.options import GRID_OPTIONS, OPTIONS, GenerateOptions, options_from

# gen_img_diffusers' flag names; every other option's flag is its name.
FLAGS = {name: f"--{name}" for name in OPTIONS} | {"width": "--W", "height": "--H"}


def add_generation_commands(commands: argparse._SubParsersAction) -> None:
    generate = commands.add_parser(
        "generate",
        help="make images with a model and embeddings (gen_img_diffusers' option names)",
    )
    generate.add_argument("--ckpt", required=True, help="model folder, file, or demo:sd1")
    generate.add_argument(
        "--textual_inversion_embeddings", nargs="*", default=[], metavar="FILE",
        help="embedding files; each file's name (stem) is its trigger word",
    )  # fmt: skip
    generate.add_argument(
        "--images_per_prompt", type=int, default=1, help="how many images (default: 1)"
    )
    _add_model_options(generate, vae_default="")
    _add_option_flags(generate, [name for name in OPTIONS if name != "batch_count"])
    generate.add_argument("--outdir", required=True, help="folder for the PNGs")

    compare = commands.add_parser(
        "compare",
        help="one image grid of a run's checkpoints (rows) by seeds (columns)",
        description="Without --checkpoints: up to 4 checkpoints spread over the run, the final "
        "one included (--all: every one still on disk). The model defaults to the one the run "
        "trained on (its config.toml), the trigger word to the run's output_name.",
    )
    compare.add_argument("run_folder", metavar="RUN_FOLDER", help="a training run's output folder")
    compare.add_argument(
        "--checkpoints", nargs="+", metavar="FILE", help="embedding files (default: 4 spread)"
    )
    compare.add_argument("--all", action="store_true", help="every checkpoint of the run")
    compare.add_argument("--seeds", nargs="+", type=int, required=True, help="one column each")
    compare.add_argument("--trigger", help="the word the checkpoints load as (default: the run's)")
    compare.add_argument("--ckpt", help="base model (default: the one the run trained on)")
    _add_model_options(compare, vae_default=None)  # None: the run's own VAE, if it had one
    _add_option_flags(compare, ["prompt", *GRID_OPTIONS])  # the prompt should hold the trigger
    compare.add_argument("--outdir", required=True, help="folder for the grid PNG")

    commands.add_parser(
        "serve", help="the generation worker: JSON requests on stdin, JSON replies on stdout"
    )

    inspect = commands.add_parser(
        "inspect", help="what an embedding file holds; with --model, the nearest real tokens"
    )
    inspect.add_argument("embedding", help="any embedding file")
    inspect.add_argument("--model", default="", help="compare with this model's vocabulary")
    inspect.add_argument("--json", action="store_true", help="machine-readable report")


def _add_model_options(parser: argparse.ArgumentParser, vae_default: str | None) -> None:
    """The model flags generate and compare share."""
    parser.add_argument("--v2", action="store_true")
    parser.add_argument("--v_parameterization", action="store_true")
    parser.add_argument("--vae", default=vae_default, help="a VAE to use instead of the model's")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")


def _add_option_flags(parser: argparse.ArgumentParser, names: list[str]) -> None:
    """A flag per generation option, as declared in GenerateOptions (values are checked there,
    so a mistake names the flag); the prompt is required."""
    for name in names:
        info = OPTIONS[name]
        help_text = info.help + (
            f" One of: {', '.join(map(str, info.choices))}." if info.choices else ""
        )
        parser.add_argument(
            FLAGS[name],
            dest=name,
            type=info.type,
            required=name == "prompt",
            default=info.default,
            metavar=name.upper(),
            help=f"{help_text} (default: {info.default})" if info.default != "" else help_text,
        )


def _options(args: argparse.Namespace, **values: Any) -> GenerateOptions:
    """The generation options among the parsed flags, with `values` on top."""
    given = {name: getattr(args, name) for name in OPTIONS if name in vars(args)}
    return options_from({**given, **values}, labels=FLAGS)


def command_generate(args: argparse.Namespace) -> int:
    from ti_core.generation.generator import Generator, save_images

    batch_size = max(1, min(args.batch_size, args.images_per_prompt))
    batch_count = max(1, -(-args.images_per_prompt // batch_size))
    options = _options(args, batch_count=batch_count, batch_size=batch_size)  # before loading
    generator = Generator(
        args.ckpt,
        v2=args.v2,
        v_parameterization=args.v_parameterization,
        vae=args.vae,
        device=args.device,
    )
    for path in args.textual_inversion_embeddings:
        generator.add_embedding(path)
    results = generator.generate(options)[: max(1, args.images_per_prompt)]
    for path in save_images(results, args.outdir):
        print(f"wrote {path}")
    return 0


def command_compare(args: argparse.Namespace) -> int:
    from ti_core.generation.generator import Generator
    from ti_core.generation.grid import (
        compare_grid,
        run_checkpoints,
        run_model,
        run_trigger,
        save_grid,
        spread,
    )

    options = _options(args)  # a bad flag fails before the model loads
    run = Path(args.run_folder)
    if args.checkpoints:
        checkpoints = [_in_run_folder(run, path) for path in args.checkpoints]
    else:
        found = run_checkpoints(run)
        if not found:
            raise TiError(f"{run}: no embedding files found in this run folder.")
        checkpoints = found if args.all else spread(found)
    trigger = args.trigger or run_trigger(run)
    if not trigger:
        raise TiError(f"{run}: no config.toml says the run's output_name; pass --trigger WORD.")
    model = {"model": args.ckpt, "v2": args.v2, "v_parameterization": args.v_parameterization}
    if not args.ckpt:
        model = run_model(run)
        model["v2"] |= args.v2
        model["v_parameterization"] |= args.v_parameterization
    if args.vae is not None:
        model["vae"] = args.vae
    generator = Generator(model.pop("model"), **model, device=args.device)
    result = compare_grid(generator, checkpoints, args.seeds, options, trigger=trigger)
    print(f"wrote {save_grid(result, args.outdir)}")
    return 0


def _in_run_folder(run: Path, path: str) -> Path:
    """A --checkpoints file as given, else by that name inside the run folder."""
    for candidate in (Path(path), run / path):
        if candidate.is_file():
            return candidate
    raise TiError(f"{path}: checkpoint file not found, neither as given nor in {run}.")


def command_serve(args: argparse.Namespace) -> int:
    from ti_core.generation.worker import serve

    return serve()


def command_inspect(args: argparse.Namespace) -> int:
    from ti_core.embeddings.inspect import format_report, inspect_file, to_json

    report = inspect_file(args.embedding, args.model)
    print(to_json(report) if args.json else format_report(report))
    return 0


GENERATION_COMMANDS = {
    "generate": command_generate,
    "compare": command_compare,
    "serve": command_serve,
    "inspect": command_inspect,
}
