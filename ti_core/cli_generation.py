"""The command line's image side: generate, compare (a run's checkpoints as one grid),
inspect, and serve (the GUI's generation worker). Option names follow gen_img_diffusers."""

from __future__ import annotations

import argparse
from pathlib import Path

from ti_core.errors import TiError


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
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--seed", type=int, help="first image's seed (default: random)")
    generate.add_argument("--images_per_prompt", type=int, default=1)
    generate.add_argument("--batch_size", type=int, default=1)
    _add_image_options(generate, vae_default="")
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
    compare.add_argument("--prompt", required=True, help="should contain the trigger word")
    compare.add_argument("--trigger", help="the word the checkpoints load as (default: the run's)")
    compare.add_argument("--ckpt", help="base model (default: the one the run trained on)")
    _add_image_options(compare, vae_default=None)  # None: the run's own VAE, if it had one
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


def _add_image_options(parser: argparse.ArgumentParser, vae_default: str | None) -> None:
    """The model flags and image settings generate and compare share."""
    parser.add_argument("--v2", action="store_true")
    parser.add_argument("--v_parameterization", action="store_true")
    parser.add_argument("--vae", default=vae_default, help="a VAE to use instead of the model's")
    parser.add_argument("--negative_prompt", default="")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--scale", type=float, default=7.5)
    parser.add_argument("--W", type=int, default=512, help="width of each image")
    parser.add_argument("--H", type=int, default=512, help="height of each image")
    parser.add_argument("--sampler", default="ddim")
    parser.add_argument("--clip_skip", type=int, default=1)
    parser.add_argument("--max_token_length", type=int, default=75, choices=(75, 150, 225))
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")


def _image_settings(args: argparse.Namespace) -> dict:
    """The Generator.generate keywords of the shared image options."""
    return {
        "width": args.W,
        "height": args.H,
        "steps": args.steps,
        "scale": args.scale,
        "sampler": args.sampler,
        "clip_skip": args.clip_skip,
        "max_token_length": args.max_token_length,
    }


def command_generate(args: argparse.Namespace) -> int:
    from ti_core.generate import Generator, save_images

    generator = Generator(
        args.ckpt,
        v2=args.v2,
        v_parameterization=args.v_parameterization,
        vae=args.vae,
        device=args.device,
    )
    for path in args.textual_inversion_embeddings:
        generator.add_embedding(path)
    batch_size = max(1, min(args.batch_size, args.images_per_prompt))
    results = generator.generate(
        args.prompt,
        args.negative_prompt,
        seed=args.seed,
        batch_count=-(-args.images_per_prompt // batch_size),
        batch_size=batch_size,
        **_image_settings(args),
    )[: max(1, args.images_per_prompt)]
    for path in save_images(results, args.outdir):
        print(f"wrote {path}")
    return 0


def command_compare(args: argparse.Namespace) -> int:
    from ti_core.compare_grid import (
        compare_grid,
        run_checkpoints,
        run_model,
        run_trigger,
        save_grid,
        spread,
    )
    from ti_core.generate import Generator

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
    result = compare_grid(
        generator,
        checkpoints,
        args.seeds,
        args.prompt,
        trigger=trigger,
        negative_prompt=args.negative_prompt,
        **_image_settings(args),
    )
    print(f"wrote {save_grid(result, args.outdir)}")
    return 0


def _in_run_folder(run: Path, path: str) -> Path:
    """A --checkpoints file as given, else by that name inside the run folder."""
    for candidate in (Path(path), run / path):
        if candidate.is_file():
            return candidate
    raise TiError(f"{path}: checkpoint file not found, neither as given nor in {run}.")


def command_serve(args: argparse.Namespace) -> int:
    from ti_core.serve import serve

    return serve()


def command_inspect(args: argparse.Namespace) -> int:
    from ti_core.inspect_embedding import format_report, inspect_file, to_json

    report = inspect_file(args.embedding, args.model)
    print(to_json(report) if args.json else format_report(report))
    return 0


GENERATION_COMMANDS = {
    "generate": command_generate,
    "compare": command_compare,
    "serve": command_serve,
    "inspect": command_inspect,
}
