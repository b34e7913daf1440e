"""Side-by-side speed and memory of our training loop and the common public Textual Inversion
loop (diffusers' example) on the same model, data, batch, seed and precision.

    python benchmarks/bench_train.py [--family sd1|sdxl] [--size tiny|real] [--batch N]
                                     [--steps N] [--device cpu|cuda] [--json]

This process only orchestrates (it never imports torch): one child prepares the model and the
dataset, then each loop runs in its own child (the script again, with the hidden --only flag),
so each loop's peak RSS is its own. See benchmarks/README.md for the figures and what they mean.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

LOOPS = ("ours", "reference")
RESULT_PREFIX = "BENCH_RESULT "


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark our Textual Inversion training loop against the reference one."
    )
    parser.add_argument("--family", choices=("sd1", "sdxl"), default="sd1")
    parser.add_argument(
        "--size",
        choices=("tiny", "real"),
        default="tiny",
        help="tiny: the demo model (64 px). real: the real SD1.5 / SDXL layer sizes with random "
        "weights, built once into the cache (SD1.5 ~4.3 GB, SDXL ~14 GB on disk).",
    )
    parser.add_argument("--batch", type=int, default=1, help="images per step")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per loop")
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps first (3 tiny, 1 real)"
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--precision",
        choices=("no", "fp16", "bf16"),
        default=None,
        help="mixed precision (default: fp16 on cuda, no on cpu)",
    )
    parser.add_argument(
        "--resolution", type=int, default=None, help="image side in pixels (64 tiny, 512 SD1.5, "
        "1024 SDXL)"
    )  # fmt: skip
    parser.add_argument(
        "--images", type=int, default=None, help="dataset size (24 tiny, 4 real); the latent "
        "cache encodes each once"
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rounds", type=int, default=1, help="run the loops this many times, alternating, and "
        "report each loop's median speed (steadier on a busy machine)"
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print one JSON object, no table")
    # Internal: what a child process does, and what the prepare step gave it.
    parser.add_argument("--only", choices=("prepare", *LOOPS), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if min(options.batch, options.steps, options.rounds) < 1:
        parser.error("--batch, --steps and --rounds must be 1 or more")
    if options.device == "cuda" and options.precision is None:
        options.precision = "fp16"
    options.precision = options.precision or "no"
    real = options.size == "real"
    if options.warmup is None:
        options.warmup = 1 if real else 3
    options.warmup = max(1, options.warmup)
    if options.resolution is None:
        options.resolution = {"sd1": 512, "sdxl": 1024}[options.family] if real else 64
    if options.images is None:
        options.images = 4 if real else 24
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    if options.only:
        return run_child(options)
    prepared = child_result(options, "prepare", [])
    extra = ["--model", prepared["model"], "--data", prepared["data"]]
    rounds: dict[str, list[dict[str, Any]]] = {loop: [] for loop in LOOPS}
    for _ in range(options.rounds):
        for loop in LOOPS:
            rounds[loop].append(child_result(options, loop, extra))
    results = {loop: summarize(rounds[loop]) for loop in LOOPS}
    ratios = compare(results["ours"], results["reference"])
    if options.json:
        print(json.dumps({"settings": settings(options), **results, "ratios": ratios}, indent=2))
    else:
        print(table(options, results, ratios))
    return 0


def run_child(options: argparse.Namespace) -> int:
    """The work of one child process; its result is one JSON line on stdout."""
    here = Path(__file__).resolve().parent
    sys.path[:0] = [str(here), str(here.parent)]  # the bench modules, then ti_core
    import logging
    import os

    # Only what matters on the console: no progress bars, no library chatter.
    for name, value in (("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("TRANSFORMERS_VERBOSITY",
                        "error"), ("DIFFUSERS_VERBOSITY", "error")):  # fmt: skip
        os.environ.setdefault(name, value)

    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    if options.only == "prepare":
        from bench_setup import prepare

        result = prepare(options.family, options.size, options.images, options.seed)
    else:
        from bench_loops import measure

        result = measure(options.only, options)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


def child_result(options: argparse.Namespace, only: str, extra: list[str]) -> dict[str, Any]:
    """Run this script again as `--only <only>` and read its result line; its log passes
    through to our stderr, so a long run shows progress."""
    forwarded = ["--family", options.family, "--size", options.size,
                 "--batch", str(options.batch), "--steps", str(options.steps),
                 "--warmup", str(options.warmup), "--device", options.device,
                 "--precision", options.precision, "--resolution", str(options.resolution),
                 "--images", str(options.images), "--seed", str(options.seed)]  # fmt: skip
    command = [sys.executable, str(Path(__file__).resolve()), *forwarded, "--only", only, *extra]
    completed = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    lines = [line for line in completed.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if completed.returncode or not lines:
        sys.exit(f"bench_train: the {only} step failed (exit code {completed.returncode}).")
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One loop over its rounds: the round of median speed, with the highest peak memory
    seen in any round; every round's figures stay under "rounds"."""
    ordered = sorted(rounds, key=lambda result: result["steps_per_s"])
    summary = dict(ordered[(len(ordered) - 1) // 2])
    for key in ("peak_rss_mib", "peak_cuda_mib"):
        values = [result[key] for result in rounds if result[key] is not None]
        summary[key] = max(values) if values else None
    if len(rounds) > 1:
        summary["rounds"] = rounds
    return summary


def compare(ours: dict[str, Any], reference: dict[str, Any]) -> dict[str, float | None]:
    """ours / reference: above 1 is faster for speed; below 1 is less memory."""

    def ratio(key: str) -> float | None:
        if not ours.get(key) or not reference.get(key):
            return None
        return ours[key] / reference[key]

    return {
        "speed": ratio("steps_per_s"),
        "peak_rss": ratio("peak_rss_mib"),
        "peak_cuda": ratio("peak_cuda_mib"),
        "first_step": ratio("first_step_s"),
    }


def settings(options: argparse.Namespace) -> dict[str, Any]:
    keys = ("family", "size", "batch", "steps", "warmup", "device", "precision",
            "resolution", "images", "seed", "rounds")  # fmt: skip
    return {key: getattr(options, key) for key in keys}


def table(
    options: argparse.Namespace, results: dict[str, dict[str, Any]], ratios: dict[str, Any]
) -> str:
    ours = results["ours"]
    cuda = options.device == "cuda"
    lines = [
        f"bench_train: {options.family} {options.size}, batch {options.batch}, "
        f"{options.steps} steps (+{options.warmup} warm-up), {options.device} {ours['dtype']}, "
        f"{ours['threads']} thread(s), {options.images} images at {options.resolution} px"
        + (f", median of {options.rounds} rounds" if options.rounds > 1 else ""),
        f"{'loop':<10} {'steps/s':>9} {'images/s':>9} {'first step s':>13} "
        f"{'peak RSS MiB':>13}" + (f" {'peak CUDA MiB':>14}" if cuda else "")
        + f" {'trained values':>15}",
    ]  # fmt: skip
    for loop in LOOPS:
        row = results[loop]
        cells = (
            f"{loop:<10} {row['steps_per_s']:>9.3f} {row['images_per_s']:>9.3f} "
            f"{row['first_step_s']:>13.2f} {number(row['peak_rss_mib']):>13}"
        )
        if cuda:
            cells += f" {number(row['peak_cuda_mib']):>14}"
        lines.append(cells + f" {row['trained_values']:>15,}")
    line = f"ours/reference: speed {times(ratios['speed'])}, peak RSS {times(ratios['peak_rss'])}"
    if cuda:
        line += f", peak CUDA {times(ratios['peak_cuda'])}"
    lines.append(line + f", time to first step {times(ratios['first_step'])}")
    return "\n".join(lines)


def number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def times(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


if __name__ == "__main__":
    sys.exit(main())
