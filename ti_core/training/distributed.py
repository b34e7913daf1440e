"""Data-parallel training over the processes `accelerate launch --num_processes N` (or
torchrun) starts: each process trains on its share of the batches, the trained vectors'
gradients are averaged before every optimizer step, so every process holds the same vectors,
and only the first process writes the run folder (events, log, embeddings, samples, state).

One process (no WORLD_SIZE) is a team of one: every call here is then free.

sd-scripts' ddp_* and DeepSpeed options are read here too: ddp_timeout is the process group's
timeout; the trained vectors (a few thousand values) are averaged by hand, without
DistributedDataParallel, so its bucket settings and DeepSpeed's ZeRO partitioning have nothing
to act on, and the run says so once.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from ti_core.errors import ConfigError

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


def join_team(ddp_timeout: int = 0) -> Team:
    """The team this process belongs to, from the variables the launcher sets. ddp_timeout
    (minutes, sd-scripts' option; 0 = PyTorch's default): how long a process waits for the
    others at a collective call before the run fails."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size == 1:
        return Team()
    rank = int(os.environ.get("RANK", "0") or 0)
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)) or 0)
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend=backend, **process_group_kwargs(ddp_timeout))
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


def process_group_kwargs(ddp_timeout: int) -> dict[str, Any]:
    """init_process_group's keyword arguments for ddp_timeout (sd-scripts gives accelerate's
    InitProcessGroupKwargs the same timedelta)."""
    return {"timeout": timedelta(minutes=ddp_timeout)} if ddp_timeout else {}


def check_deepspeed(training: Any) -> None:
    """Preflight: deepspeed = true needs the deepspeed package (found without importing it,
    which is slow and may build kernels)."""
    if training.deepspeed and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(
            "[training] deepspeed = true needs the deepspeed package, which is not installed: "
            "pip install deepspeed (DS_BUILD_OPS=0 pip install deepspeed where its CUDA "
            "kernels cannot be built), or turn deepspeed off."
        )


def deepspeed_plugin(config: Any, team: Team) -> Any:
    """accelerate's DeepSpeedPlugin for the run's DeepSpeed options, filled as sd-scripts'
    deepspeed_utils.prepare_deepspeed_plugin fills it; None when deepspeed is off."""
    training = config.training
    if not training.deepspeed:
        return None
    from accelerate import DeepSpeedPlugin

    plugin = DeepSpeedPlugin(
        zero_stage=training.zero_stage,
        gradient_accumulation_steps=1,  # sd-scripts fixes it at 1 for accelerate
        gradient_clipping=training.max_grad_norm,
        offload_optimizer_device=training.offload_optimizer_device or None,
        offload_optimizer_nvme_path=training.offload_optimizer_nvme_path or None,
        offload_param_device=training.offload_param_device or None,
        offload_param_nvme_path=training.offload_param_nvme_path or None,
        zero3_init_flag=training.zero3_init_flag,
        zero3_save_16bit_model=training.zero3_save_16bit_model,
    )
    ds = plugin.deepspeed_config
    micro_batch = config.dataset.train_batch_size * training.gradient_accumulation_steps
    ds["train_micro_batch_size_per_gpu"] = micro_batch
    ds["train_batch_size"] = micro_batch * team.size
    plugin.set_mixed_precision(training.mixed_precision)
    if training.mixed_precision == "fp16":
        ds["fp16"]["initial_scale_power"] = 0
    if training.full_fp16 or training.fp16_master_weights_and_gradients:
        if training.offload_optimizer_device == "cpu" and training.zero_stage == 2:
            ds.setdefault("fp16", {})["fp16_master_weights_and_grads"] = True
        else:
            log.info("DeepSpeed keeps fp16 master weights only with ZeRO stage 2 and "
                     "offload_optimizer_device = cpu")  # fmt: skip
    return plugin


def announce_distributed_options(config: Any, team: Team) -> None:
    """Once at set-up: what the ddp_* and DeepSpeed options do in this run."""
    training = config.training
    bucket_options = [name for name in ("ddp_gradient_as_bucket_view", "ddp_static_graph")
                      if getattr(training, name)]  # fmt: skip
    if bucket_options:
        log.warning(
            "%s: no effect here: they tune DistributedDataParallel's gradient buckets, and "
            "this trainer averages the few trained vectors itself, without DDP.",
            " and ".join(bucket_options),
        )
    if training.ddp_timeout and team.size == 1:
        log.info("ddp_timeout: a single process waits for no other; no effect")
    plugin = deepspeed_plugin(config, team)
    if plugin is not None:
        zero = plugin.deepspeed_config["zero_optimization"]
        log.warning(
            "deepspeed: ZeRO stage %d (offload optimizer: %s, parameters: %s) has nothing to "
            "partition or offload in Textual Inversion (only the embedding's vectors train); "
            "training data-parallel over %d process(es) without a DeepSpeed engine.",
            zero["stage"], zero["offload_optimizer"]["device"], zero["offload_param"]["device"],
            team.size,
        )  # fmt: skip
