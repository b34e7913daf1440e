"""The speed options that act once, at set-up (config/runtime_options.py SpeedOptions):
torch.compile of the UNet, and a log line for each option that cannot act in this run, so
none is silently ignored. SDPA attention is chosen with the others in training/setup.py.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ti_core.errors import ConfigError
from ti_core.training.distributed import Team, announce_distributed_options

log = logging.getLogger(__name__)


def check_speed_options(training: Any) -> None:
    """Preflight: a dynamo_backend this PyTorch does not have stops the run before loading."""
    if not training.torch_compile or training.dynamo_backend == "no":
        return
    import torch._dynamo

    available = torch._dynamo.list_backends(exclude_tags=())
    if training.dynamo_backend not in available:
        usual = [
            name for name in ("inductor", "aot_eager", "eager", "cudagraphs") if name in available
        ]
        raise ConfigError(
            f"[training] dynamo_backend = {training.dynamo_backend!r}: PyTorch "
            f"{torch.__version__} has no such torch.compile backend (it has "
            f"{', '.join(usual)}, ...). Pick one of those (inductor is the usual one), or turn "
            "torch_compile off."
        )


def compile_unet(unet: Any, backend: str) -> None:
    """torch.compile the UNet's forward in place, once: the module stays a diffusers UNet (its
    config, dtype and attention processors are still there for sampling). The first step of
    a new bucket size recompiles (dynamo then treats sizes as dynamic, so it happens a few
    times per run, not once per batch); the compiled code is kept, never rebuilt per step."""
    if backend == "no":  # accelerate's word for "do not compile"; kohya_ss GUI writes it
        log.warning("torch_compile: dynamo_backend is 'no', so nothing is compiled")
        return
    log.info(
        "torch_compile: the UNet is compiled with dynamo_backend %s on its first step", backend
    )
    unet.compile(backend=backend)


def announce_runtime_options(config: Any, device: torch.device, team: Team) -> None:
    """Once at set-up: what the options with nothing to act on in this run do (nothing, and
    the log says so), and what the ddp_* and DeepSpeed options do (distributed.py)."""
    announce_speed_options(config.training, device)
    announce_distributed_options(config, team)


def announce_speed_options(training: Any, device: torch.device) -> None:
    """The speed options that have nothing to act on in this run."""
    for name, why in (
        ("fp8_base", "the frozen UNet is never stored in fp8 for Textual Inversion"),
        ("fused_backward_pass", "there is no optimizer step over the model to fuse"),
    ):
        if getattr(training, name):
            log.info("%s: no effect in Textual Inversion (%s; sd-scripts' Textual Inversion "
                     "does not use it either)", name, why)  # fmt: skip
    if training.highvram and device.type != "cuda":
        log.warning(
            "highvram keeps memory on the GPU; on %s there is none to keep, so it has no effect.",
            device.type.upper(),
        )
