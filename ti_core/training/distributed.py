"""Data-parallel training over the processes `accelerate launch --num_processes N` (or
torchrun) starts: each process trains on its share of the batches, the trained vectors'
gradients are averaged before every optimizer step, so every process holds the same vectors,
and only the first process writes the run folder (events, log, embeddings, samples, state).

One process (no WORLD_SIZE) is a team of one: every call here is then free.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Team:
    size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, chosen: torch.device) -> torch.device:
        """One GPU per process: cuda:<local rank>; the CPU is shared."""
        if self.size > 1 and chosen.type == "cuda":
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return chosen

    def average_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """Mean of every process's gradients (a few thousand values: cheap)."""
        if self.size == 1:
            return
        for parameter in parameters:
            if parameter.grad is not None:
                torch.distributed.all_reduce(parameter.grad, op=torch.distributed.ReduceOp.SUM)
                parameter.grad.div_(self.size)

    def average(self, value: torch.Tensor) -> torch.Tensor:
        """The mean over processes of a scalar (a NaN anywhere makes it NaN everywhere)."""
        if self.size == 1:
            return value
        total = value.detach().float().clone()
        torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM)
        return total / self.size

    def anyone(self, flag: bool, device: torch.device) -> bool:
        """True on every process when it is true on any (a STOP seen by one stops all)."""
        if self.size == 1:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return bool(value.item())

    def wait_for_all(self) -> None:
        if self.size > 1:
            torch.distributed.barrier()


def join_team() -> Team:
    """The team this process belongs to, from the variables the launcher sets."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size == 1:
        return Team()
    rank = int(os.environ.get("RANK", "0") or 0)
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)) or 0)
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend=backend)
    log.info("data-parallel training: process %d of %d", rank + 1, size)
    return Team(size, rank, local_rank)


def leave_team(team: Team) -> None:
    if team.size > 1 and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


class ShareOfBatches:
    """This process's share of an epoch's batches: every size-th batch from its rank on, the
    same count in every process (the last few batches of an uneven epoch are left out, as
    a distributed sampler with drop_last does), so the processes step together."""

    def __init__(self, batches: Any, team: Team) -> None:
        self.batches, self.team = batches, team

    def __len__(self) -> int:
        return len(self.batches) // self.team.size

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.batches[index * self.team.size + self.team.rank]

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)
