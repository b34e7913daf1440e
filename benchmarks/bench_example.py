"""Our trainer against the real diffusers Textual Inversion example, side by side, as each runs
for its user: `python -m ti_core train` and `python textual_inversion.py`, on the same demo model
(a diffusers folder), the same 24 demo images, batch size, resolution, steps, seed and rate.

    python benchmarks/bench_example.py --example /tmp/ti-example/textual_inversion.py
                                       [--batch 4] [--steps 200] [--warmup 20] [--rounds 3]
                                       [--cache-latents | --no-cache-latents] [--json]

The example's file is never part of this repository and never downloaded here: fetch
examples/textual_inversion/textual_inversion.py of huggingface/diffusers yourself and pass its
path. Each run is a child process; this one only orchestrates (no torch): steps/s comes from
the time of each finished step (our events.jsonl; the example's progress bar updates, recorded
by a small wrapper), counted after `--warmup` steps, and peak RSS from the child's own
resource usage (wait4). See benchmarks/README.md for the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULT_PREFIX = "BENCH_RESULT "
LOOPS = ("ours", "example")
LEARNING_RATE = "5e-3"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--example", required=True, help="path of diffusers' textual_inversion.py")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=200, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=20, help="steps before the timing starts")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="runs of each, alternating; the "
        "best round of each is reported (a busy machine only slows runs down)",
    )
    parser.add_argument(
        "--cache-latents",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ours with --cache_latents (default); the example has no cache",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="OMP_NUM_THREADS for both "
        "(default: each its own rule: ours half the cores, the example torch's)",
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--only", choices=("prepare", "example"), help=argparse.SUPPRESS)
    parser.add_argument("--record", help=argparse.SUPPRESS)
    options, rest = parser.parse_known_args(argv)
    options.example_args = rest[1:] if rest[:1] == ["--"] else rest
    options.example = str(Path(options.example).resolve())
    if not options.only and not Path(options.example).is_file():
        parser.error(f"--example {options.example}: no such file (fetch diffusers' example)")
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    if options.only == "prepare":
        print(RESULT_PREFIX + json.dumps(prepare()), flush=True)
        return 0
    if options.only == "example":
        return run_example(options)
    prepared = prepare_in_child(options)
    rounds: dict[str, list[dict[str, Any]]] = {loop: [] for loop in LOOPS}
    with tempfile.TemporaryDirectory(prefix="bench-example-") as scratch:
        for index in range(options.rounds):
            for loop in LOOPS:
                folder = Path(scratch) / f"{loop}-{index}"
                rounds[loop].append(measure(loop, options, prepared, folder))
                print(
                    f"{loop} round {index + 1}: {rounds[loop][-1]['steps_per_s']:.2f} steps/s",
                    file=sys.stderr,
                    flush=True,
                )
    best = {loop: max(rounds[loop], key=lambda r: r["steps_per_s"]) for loop in LOOPS}
    for loop in LOOPS:
        best[loop]["peak_rss_mib"] = max(r["peak_rss_mib"] for r in rounds[loop])
    ratios = {
        "speed": best["ours"]["steps_per_s"] / best["example"]["steps_per_s"],
        "peak_rss": best["ours"]["peak_rss_mib"] / best["example"]["peak_rss_mib"],
    }
    if options.json:
        print(
            json.dumps(
                {"settings": settings(options), **best, "ratios": ratios, "rounds": rounds},
                indent=2,
            )
        )
    else:
        print(table(options, best, ratios))
    return 0


# ---- preparing: the model folder, our dataset folder, the example's images folder ----------


def prepare() -> dict[str, str]:
    """The demo model (a diffusers folder) and its 24 images: our dataset folder as the demo
    has it, and a folder holding only the images (the example opens every file it finds)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from ti_core.models.demo import cache_root, demo_dir

    demo = demo_dir("sd1")
    images = cache_root() / "bench" / "example-images"
    if not images.is_dir():
        images.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=images.parent))  # renamed into place when whole
        for picture in sorted((demo / "dataset").rglob("*.png")):
            shutil.copyfile(picture, staging / picture.name)
        staging.rename(images)
    return {"model": str(demo / "model"), "dataset": str(demo / "dataset"), "images": str(images)}


def prepare_in_child(options: argparse.Namespace) -> dict[str, str]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--example",
        options.example,
        "--only",
        "prepare",
    ]
    completed = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    lines = [line for line in completed.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if completed.returncode or not lines:
        sys.exit(f"bench_example: preparing the demo failed (exit code {completed.returncode})")
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


# ---- one measured run ------------------------------------------------------------------------


def measure(
    loop: str, options: argparse.Namespace, prepared: dict[str, str], folder: Path
) -> dict[str, Any]:
    """Run one child to the end; its step times and its peak RSS."""
    folder.mkdir(parents=True)
    total = options.warmup + options.steps
    record = folder / "steps.json"
    if loop == "ours":
        command = [sys.executable, "-m", "ti_core", *our_arguments(options, prepared, folder)]
    else:
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--example",
            options.example,
            "--only",
            "example",
            "--record",
            str(record),
            "--",
            *example_arguments(options, prepared, folder),
        ]
    environment = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONPATH=str(Path(__file__).resolve().parent.parent),
    )
    if options.threads:
        environment["OMP_NUM_THREADS"] = str(options.threads)
    with open(folder / "console.log", "wb") as console:
        child = subprocess.Popen(
            command, stdout=console, stderr=subprocess.STDOUT, cwd=folder, env=environment
        )
        _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status):
        tail = (folder / "console.log").read_text(errors="replace")[-3000:]
        sys.exit(f"bench_example: the {loop} run failed:\n{tail}")
    if loop == "ours":
        stamps, threads = our_step_times(folder / "run")
    else:
        recorded = json.loads(record.read_text())
        stamps, threads = recorded["stamps"], recorded["threads"]
    if len(stamps) < total:
        sys.exit(f"bench_example: the {loop} run recorded {len(stamps)} of {total} steps")
    elapsed = stamps[total - 1] - stamps[options.warmup - 1]
    steps_per_s = options.steps / elapsed
    return {
        "loop": loop,
        "steps_per_s": steps_per_s,
        "images_per_s": steps_per_s * options.batch,
        "peak_rss_mib": usage.ru_maxrss / 1024,  # Linux: KiB
        "threads": threads,
        "command": " ".join(command[:3]) + " ...",
    }


def our_arguments(options: argparse.Namespace, prepared: dict[str, str], folder: Path) -> list[str]:
    """Our trainer as a user runs it: the demo's settings, object templates as the example."""
    arguments = [
        "train",
        "--pretrained_model_name_or_path",
        prepared["model"],
        "--train_data_dir",
        prepared["dataset"],
        "--caption_extension",
        ".txt",
        "--use_object_template",
        "--resolution",
        "64",
        "--train_batch_size",
        str(options.batch),
        "--token_string",
        "demotoy",
        "--init_word",
        "toy",
        "--learning_rate",
        LEARNING_RATE,
        "--seed",
        "0",
        "--max_train_steps",
        str(options.warmup + options.steps),
        "--output_dir",
        str(folder / "run"),
    ]
    return arguments + (["--cache_latents"] if options.cache_latents else [])


def example_arguments(
    options: argparse.Namespace, prepared: dict[str, str], folder: Path
) -> list[str]:
    """The example's flags for the same run; saving and checkpointing after the last step only
    (its defaults save every 500 steps)."""
    never = str(10**9)
    return [
        "--pretrained_model_name_or_path",
        prepared["model"],
        "--train_data_dir",
        prepared["images"],
        "--placeholder_token",
        "<demotoy>",
        "--initializer_token",
        "toy",
        "--resolution",
        "64",
        "--train_batch_size",
        str(options.batch),
        "--learning_rate",
        LEARNING_RATE,
        "--max_train_steps",
        str(options.warmup + options.steps),
        "--seed",
        "0",
        "--save_steps",
        never,
        "--checkpointing_steps",
        never,
        "--output_dir",
        str(folder / "out"),
        *options.example_args,
    ]


def our_step_times(run: Path) -> tuple[list[float], int | None]:
    """The time of each step event, and the thread count the run logged."""
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    stamps = [event["time"] for event in events if event["type"] == "step"]
    threads = None
    for line in (run / "train.log").read_text().splitlines():
        if "computing on the CPU with" in line:
            threads = int(line.split("with ")[1].split()[0])
    return stamps, threads


# ---- the example, run as its user runs it, with its steps timed ----------------------------


def run_example(options: argparse.Namespace) -> int:
    """Run the example's file as __main__, recording the time of each progress-bar update
    (one per optimizer step). Two stand-ins, only where needed, neither in its training
    step: torchvision (the example only uses RandomHorizontalFlip; no CPU wheel of it fits
    this torch here) and transformers 5's CLIPTextModel, which lost its `.text_model`."""
    import runpy

    import diffusers  # noqa: F401 - they check for torchvision when imported: before the stand-in
    import torch
    import tqdm.auto
    import transformers  # noqa: F401

    try:
        import torchvision.transforms  # noqa: F401
    except (ImportError, RuntimeError, OSError):
        sys.modules["torchvision"] = stand_in_torchvision()
        sys.modules["torchvision.transforms"] = sys.modules["torchvision"].transforms
    from transformers import CLIPTextModel

    if not hasattr(CLIPTextModel, "text_model"):
        # transformers 5 made CLIPTextModel its own text model; the example freezes
        # text_model.encoder, .final_layer_norm, .embeddings.position_embedding.
        CLIPTextModel.text_model = property(lambda model: model)  # type: ignore[attr-defined]
    stamps: list[float] = []

    class TimedBar(tqdm.auto.tqdm):
        def update(self, n: float | None = 1) -> bool | None:
            stamps.append(time.time())
            return super().update(n)

    tqdm.auto.tqdm = TimedBar
    sys.argv = [options.example, *options.example_args]
    try:
        runpy.run_path(options.example, run_name="__main__")
    finally:
        Path(options.record).write_text(
            json.dumps({"stamps": stamps, "threads": torch.get_num_threads()})
        )
    return 0


def stand_in_torchvision() -> Any:
    import types

    import torch
    from PIL import Image

    class RandomHorizontalFlip(torch.nn.Module):
        """torchvision's: flip with probability p, drawn from torch's global generator."""

        def __init__(self, p: float = 0.5) -> None:
            super().__init__()
            self.p = p

        def forward(self, image: Any) -> Any:
            if torch.rand(1) < self.p:
                return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            return image

    module = types.ModuleType("torchvision")
    module.transforms = types.ModuleType("torchvision.transforms")  # type: ignore[attr-defined]
    module.transforms.RandomHorizontalFlip = RandomHorizontalFlip  # type: ignore[attr-defined]
    return module


# ---- the table -------------------------------------------------------------------------------


def settings(options: argparse.Namespace) -> dict[str, Any]:
    keys = ("batch", "steps", "warmup", "rounds", "cache_latents", "threads")
    return {key: getattr(options, key) for key in keys}


def table(
    options: argparse.Namespace, best: dict[str, dict[str, Any]], ratios: dict[str, float]
) -> str:
    lines = [
        f"bench_example: demo sd1, 64 px, batch {options.batch}, {options.steps} steps after "
        f"{options.warmup}, best of {options.rounds} round(s); ours "
        + ("with" if options.cache_latents else "without")
        + " --cache_latents",
        f"{'run':<8} {'steps/s':>9} {'images/s':>9} {'peak RSS MiB':>13} {'threads':>8}",
    ]
    for loop in LOOPS:
        row = best[loop]
        lines.append(
            f"{loop:<8} {row['steps_per_s']:>9.2f} {row['images_per_s']:>9.2f} "
            f"{row['peak_rss_mib']:>13.1f} {row['threads']!s:>8}"
        )
    lines.append(f"ours/example: speed {ratios['speed']:.2f}x, peak RSS {ratios['peak_rss']:.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
