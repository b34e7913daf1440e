"""Runs the CUDA paths of the trainer on the demo models and prints one line per case: the
precision/attention/optimizer options a GPU user picks, each for a few steps, with the
warnings the run reported, its final loss and speed. For a machine with an NVIDIA GPU:

    python benchmarks/cuda_check.py [--steps 30] [--out DIR]

Nothing here is asserted; benchmarks/README.md records what it printed and on which GPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASES: dict[str, list[str]] = {
    "float32": [],
    "fp16": ["--mixed_precision", "fp16"],
    "bf16": ["--mixed_precision", "bf16"],
    "fp16 full_fp16": ["--mixed_precision", "fp16", "--full_fp16"],
    "bf16 full_bf16": ["--mixed_precision", "bf16", "--full_bf16"],
    "fp16 AdamW8bit": ["--mixed_precision", "fp16", "--optimizer_type", "AdamW8bit"],
    "fp16 xformers": ["--mixed_precision", "fp16", "--xformers"],
    "fp16 mem_eff_attn": ["--mixed_precision", "fp16", "--mem_eff_attn"],
    "fp16 gradient_checkpointing": ["--mixed_precision", "fp16", "--gradient_checkpointing"],
    "fp16 lowram (folder)": ["--mixed_precision", "fp16", "--lowram"],
    "fp16 lowram (single file)": ["--mixed_precision", "fp16", "--lowram", "--single_file"],
    "bf16 cache_latents batch 4": [
        "--mixed_precision", "bf16", "--cache_latents", "--train_batch_size", "4",
    ],
    "sd2 v-pred fp16": ["--family", "sd2", "--mixed_precision", "fp16"],
    "sdxl bf16": ["--family", "sdxl", "--mixed_precision", "bf16"],
}  # fmt: skip


def case_command(flags: list[str], run_dir: Path, steps: int) -> list[str]:
    family = "sd1"
    if "--family" in flags:
        family = flags[flags.index("--family") + 1]
        flags = [f for i, f in enumerate(flags) if f != "--family" and flags[i - 1] != "--family"]
    model = f"demo:{family}"
    if "--single_file" in flags:
        flags = [f for f in flags if f != "--single_file"]
        code = f"from ti_core.models.demo import demo_dir; print(demo_dir({family!r}))"
        from_cache = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
        ).stdout.strip()
        model = str(next(Path(from_cache).glob("*.safetensors")))
    return [
        sys.executable, "-m", "ti_core", "train", "--pretrained_model_name_or_path", model,
        "--train_data_dir", f"demo:{family}", "--caption_extension", ".txt",
        "--resolution", "64", "--token_string", "demotoy", "--init_word", "toy",
        "--max_train_steps", str(steps), "--learning_rate", "0.005",
        "--output_dir", str(run_dir), *flags,
    ]  # fmt: skip


def summarize(run_dir: Path, exit_code: int, seconds: float) -> dict:
    events = []
    if (run_dir / "events.jsonl").is_file():
        events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    steps = [e for e in events if e["type"] == "step"]
    done = next((e for e in events if e["type"] == "done"), {})
    errors = [e["message"] for e in events if e["type"] == "error"]
    return {
        "exit": exit_code,
        "seconds": round(seconds, 1),
        "done": done.get("reason"),
        "first_loss": round(steps[0]["loss"], 4) if steps else None,
        "last_loss": round(steps[-1]["loss"], 4) if steps else None,
        "it_s": steps[-1]["it_s"] if steps else None,
        "warnings": [e["message"] for e in events if e["type"] == "warning"],
        "errors": errors,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", default="")
    parser.add_argument("--only", nargs="*", default=None, help="case names to run")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="cuda-check-"))
    results = {}
    for name, flags in CASES.items():
        if args.only and name not in args.only:
            continue
        run_dir = out / name.replace(" ", "_").replace("(", "").replace(")", "")
        started = time.monotonic()
        try:
            command = case_command(flags, run_dir, args.steps)
        except subprocess.CalledProcessError as error:
            print(name, "could not find the demo model:", error.stderr[-800:], flush=True)
            continue
        process = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        results[name] = summarize(run_dir, process.returncode, time.monotonic() - started)
        if process.returncode:
            results[name]["stderr_tail"] = process.stderr[-1500:]
        print(name, json.dumps(results[name]), flush=True)
    (out / "cuda_check.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
