"""Which device the engine computes on, for training and for generating alike."""

from __future__ import annotations

import logging
import os

import torch

__all__ = ["choose_device"]

log = logging.getLogger(__name__)


def choose_device() -> torch.device:
    """CUDA, then Apple's MPS, then the CPU (with a thread count that does not thrash)."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    # Every CPU thread spin-waits for the slowest: on a busy or small machine, all cores can be
    # 100x slower per op than half of them (measured: 6 ms vs 30 us for a small matmul on 2
    # busy cores). OMP_NUM_THREADS, as set by `accelerate launch --num_cpu_threads_per_process`,
    # wins.
    if not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    log.info("computing on the CPU with %d thread(s)", torch.get_num_threads())
    return torch.device("cpu")
