"""Where the time of one training step goes: the real trainer (`python -m ti_core train`, the
same code path, in this process) with a plain timer around each phase of its loop.

    python benchmarks/bench_profile.py [--batch 4] [--steps 100] [--warmup 10]
                                       [--device cpu|cuda] [--no-cache-latents]
                                       [--torch-profiler] [--count-syncs] [--json] [-- FLAGS]

Nothing in ti_core changes for this: the phases are the functions `train()` calls (looked up
by name in ti_core/training/loop.py at call time), wrapped here with a timer; each phase's
time is its own, without the phases it calls (the UNet's forward is not in "step_loss: the
rest"). On CUDA every timer synchronizes first, so the GPU's work lands in the phase that
queued it. "the loop itself" is what is left of the step: reading the loss back to the host
(float / isfinite), the learning-rate schedule, the progress bar. The timed window is `--steps`
whole steps after `--warmup` steps. FLAGS after `--` go to the trainer as they are.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# (module, attribute, phase name, only when called inside this phase or None)
PHASES: list[tuple[str, str, str, str | None]] = [
    ("ti_core.training.loop", "step_loss", "step_loss: the rest (latents, loss)", None),
    (
        "ti_core.embeddings.text_encoding.CaptionIds",
        "__call__",
        "token ids of the captions",
        "step_loss",
    ),
    ("ti_core.training.loop", "encode", "text encoder forward", "step_loss"),
    ("ti_core.training.loop", "noisy_latents", "noise and timesteps", "step_loss"),
    ("diffusers.UNet2DConditionModel", "forward", "UNet forward", "step_loss"),
    ("ti_core.training.loop", "backward", "backward", None),
    ("ti_core.training.loop", "optimizer_step", "optimizer (clip, AdamW, zero_grad)", None),
    ("ti_core.training.loop", "limit_norms", "vector norm limits", None),
    ("ti_core.training.outputs.Outputs", "remember_good", "roll-back copy (remember_good)", None),
    ("ti_core.training.outputs.Outputs", "read_loss", "loss read to the host (read_loss)", None),
    ("ti_core.run_folder.writer.RunFolder", "step", "step event (events.jsonl)", None),
    ("ti_core.run_folder.writer.RunFolder", "take_flag", "flag files (STOP, SAVE_NOW, ...)", None),
    (
        "ti_core.training.outputs.Outputs",
        "save_step_copy",
        "periodic: save, validate, sample",
        None,
    ),
    ("ti_core.training.outputs.Outputs", "save_now", "periodic: save, validate, sample", None),
    ("ti_core.training.outputs.Outputs", "sample", "periodic: save, validate, sample", None),
    ("ti_core.training.insight.Insight", "measure", "periodic: save, validate, sample", None),
]
DATA = "data (the next batch)"
DATA_SOURCE = ("ti_core.data.batches.BatchLoader", "epoch")  # gives an epoch's (index, batch)
REST = "the loop itself (loss to host, lr schedule, progress)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=100, help="timed steps")
    parser.add_argument("--warmup", type=int, default=10, help="steps before the timing starts")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--cache-latents", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--torch-profiler",
        action="store_true",
        help="also print torch.profiler's busiest operators of the window",
    )
    parser.add_argument(
        "--count-syncs",
        action="store_true",
        help="CUDA: count the implicit host syncs of each phase",
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: this thread's CPU time, steadier than the wall clock on a busy "
        "machine (the trainer computes on one thread there; CPU only)",
    )
    parser.add_argument("--json", action="store_true")
    options, rest = parser.parse_known_args(argv)
    options.flags = rest[1:] if rest[:1] == ["--"] else rest
    if options.steps < 1 or options.warmup < 1:
        parser.error("--steps and --warmup must be 1 or more")
    if options.clock == "cpu" and options.device == "cuda":
        parser.error("--clock cpu measures CPU work only: use the wall clock with --device cuda")
    return options


class Phases:
    """Exclusive time per phase: entering a phase pauses the one it is called from."""

    def __init__(self, sync: Callable[[], None], clock: Callable[[], float]) -> None:
        self.sync, self.clock = sync, clock
        self.totals: dict[str, float] = defaultdict(float)
        self.syncs: dict[str, int] = defaultdict(int)
        self.stack: list[list[Any]] = []  # [name, running since]
        self.window: tuple[float, float] | None = None
        self.started: float | None = None

    def enter(self, name: str) -> None:
        self.sync()
        now = self.clock()
        if self.stack:
            self.totals[self.stack[-1][0]] += now - self.stack[-1][1]
        self.stack.append([name, now])

    def leave(self) -> None:
        self.sync()
        now = self.clock()
        name, since = self.stack.pop()
        self.totals[name] += now - since
        if self.stack:
            self.stack[-1][1] = now

    def current(self) -> str:
        return self.stack[-1][0] if self.stack else REST

    def timed(self, function: Callable, name: str, inside: str | None) -> Callable:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if inside and not (self.stack and self.stack[-1][0].startswith(inside)):
                return function(*args, **kwargs)  # e.g. the UNet inside validation
            self.enter(name)
            try:
                return function(*args, **kwargs)
            finally:
                self.leave()

        return wrapper

    def timed_batches(self, make: Callable) -> Callable:
        def wrapper(*args: Any, **kwargs: Any) -> Iterator:
            batches = iter(make(*args, **kwargs))
            while True:
                self.enter(DATA)
                try:
                    item = next(batches)
                except StopIteration:
                    return
                finally:
                    self.leave()
                yield item

        return wrapper


def resolve(target: str) -> Any:
    import importlib

    module_name, _, attribute = target.rpartition(".")
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError:
        return getattr(importlib.import_module(module_name), attribute)


def install(phases: Phases, options: argparse.Namespace, torch: Any) -> None:
    """Wrap every phase; the step event also opens and closes the timed window."""
    for target, attribute, name, inside in PHASES:
        owner = resolve(target)
        if not hasattr(owner, attribute):
            sys.exit(f"bench_profile: {target} has no {attribute} any more: update PHASES")
        setattr(owner, attribute, phases.timed(getattr(owner, attribute), name, inside))
    owner, attribute = resolve(DATA_SOURCE[0]), DATA_SOURCE[1]
    if not hasattr(owner, attribute):
        sys.exit(f"bench_profile: {DATA_SOURCE[0]} has no {attribute} any more: update DATA_SOURCE")
    setattr(owner, attribute, phases.timed_batches(getattr(owner, attribute)))
    writer = resolve("ti_core.run_folder.writer.RunFolder")
    timed_step = writer.step
    profiler: list[Any] = []

    def step_event(self: Any, step: int, *args: Any, **kwargs: Any) -> Any:
        result = timed_step(self, step, *args, **kwargs)
        if step in (options.warmup, options.warmup + options.steps):
            phases.sync()
            now = phases.clock()
            if step == options.warmup:  # the window opens: what came before was warm-up
                phases.totals.clear()
                phases.syncs.clear()
                phases.started = now
                if phases.stack:
                    phases.stack[-1][1] = now
                if options.torch_profiler:
                    profiler.append(start_torch_profiler(torch, options.device))
            else:
                phases.window = (phases.started or now, now)
                phases.final = dict(phases.totals)  # type: ignore[attr-defined]
                if profiler:
                    profiler[0].stop()
                    phases.profile = profiler[0]  # type: ignore[attr-defined]
        return result

    writer.step = step_event


def start_torch_profiler(torch: Any, device: str) -> Any:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    profiler = torch.profiler.profile(activities=activities)
    profiler.start()
    return profiler


def count_syncs(phases: Phases, torch: Any) -> None:
    """CUDA's sync debug mode warns at each implicit host sync; count them per phase."""
    torch.cuda.set_sync_debug_mode("warn")
    shown = warnings.showwarning

    def counted(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
        if "synchroniz" in str(message):
            phases.syncs[phases.current()] += 1
        else:
            shown(message, category, *args, **kwargs)

    warnings.showwarning = counted
    warnings.simplefilter("always")


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    if options.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import logging

    import torch

    if options.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_profile: --device cuda, but torch sees no CUDA GPU here.")
    sync = torch.cuda.synchronize if options.device == "cuda" else (lambda: None)
    phases = Phases(sync, time.thread_time if options.clock == "cpu" else time.perf_counter)
    install(phases, options, torch)
    if options.count_syncs and options.device == "cuda":
        count_syncs(phases, torch)
    from ti_core.cli.main import main as cli

    logging.getLogger("ti_core").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as scratch:
        code = cli(
            [
                "train",
                "--pretrained_model_name_or_path",
                "demo:sd1",
                "--train_data_dir",
                "demo:sd1",
                "--caption_extension",
                ".txt",
                "--resolution",
                "64",
                "--train_batch_size",
                str(options.batch),
                "--token_string",
                "demotoy",
                "--init_word",
                "toy",
                "--learning_rate",
                "5e-3",
                "--seed",
                "0",
                "--max_train_steps",
                str(options.warmup + options.steps),
                "--output_dir",
                str(Path(scratch) / "run"),
                *(["--cache_latents"] if options.cache_latents else []),
                *options.flags,
            ]
        )
    if code or phases.window is None:
        sys.exit(f"bench_profile: the run failed or ended early (exit code {code})")
    report = summary(phases, options, torch)
    if options.json:
        print(json.dumps(report, indent=2))
    else:
        print(table(report))
        if getattr(phases, "profile", None) is not None:
            sort = "self_cuda_time_total" if options.device == "cuda" else "self_cpu_time_total"
            print(phases.profile.key_averages().table(sort_by=sort, row_limit=15))  # type: ignore[attr-defined]
    return 0


def summary(phases: Phases, options: argparse.Namespace, torch: Any) -> dict[str, Any]:
    started, ended = phases.window  # type: ignore[misc]
    step_ms = (ended - started) / options.steps * 1000
    totals = dict(phases.final)  # type: ignore[attr-defined]
    totals[REST] = max(0.0, (ended - started) - sum(totals.values()))
    rows = sorted(totals.items(), key=lambda item: -item[1])
    return {
        "settings": {
            key: getattr(options, key)
            for key in ("batch", "steps", "warmup", "device", "cache_latents", "clock", "flags")
        },
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "step_ms": step_ms,
        "steps_per_s": 1000 / step_ms,
        "phases": [
            {
                "phase": name,
                "ms_per_step": seconds / options.steps * 1000,
                "share": seconds / (ended - started),
                "syncs_per_step": phases.syncs.get(name, 0) / options.steps,
            }
            for name, seconds in rows
        ],
    }


def table(report: dict[str, Any]) -> str:
    settings = report["settings"]
    lines = [
        f"bench_profile: demo sd1, 64 px, batch {settings['batch']}, {settings['device']}, "
        f"{report['threads']} thread(s), {settings['steps']} steps after {settings['warmup']}, "
        f"cache_latents {'on' if settings['cache_latents'] else 'off'}, {settings['clock']} clock",
        f"{'phase':<52} {'ms/step':>8} {'share':>6}"
        + (" syncs/step" if settings["device"] == "cuda" else ""),
    ]
    for row in report["phases"]:
        line = f"{row['phase']:<52} {row['ms_per_step']:>8.2f} {row['share']:>6.1%}"
        if settings["device"] == "cuda":
            line += f" {row['syncs_per_step']:>10.1f}"
        lines.append(line)
    lines.append(
        f"{'whole step':<52} {report['step_ms']:>8.2f}   ({report['steps_per_s']:.2f} steps/s)"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
