"""The training benchmark runs end to end on the demo model and prints its comparison table.
No timing is asserted: speed on a shared test machine says nothing."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT


def test_bench_train_prints_a_row_per_loop_and_the_ratios():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the demo cache dir comes from conftest
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_train.py"),
         "--size", "tiny", "--family", "sd1", "--batch", "1", "--steps", "2", "--warmup", "1"],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = completed.stdout.splitlines()
    rows = {line.split()[0]: line.split() for line in lines if line.split()}
    # loop, steps/s, images/s, first step s, peak RSS MiB, trained values
    assert len(rows["ours"]) == 6 and len(rows["reference"]) == 6
    assert float(rows["ours"][1]) > 0 and float(rows["reference"][1]) > 0
    # Ours trains one 32-wide row of the demo's text encoder; the reference the whole table.
    assert rows["ours"][-1] == "32" and rows["reference"][-1] == "1,581,088"
    ratio_line = next(line for line in lines if line.startswith("ours/reference:"))
    assert "speed" in ratio_line and "peak RSS" in ratio_line
