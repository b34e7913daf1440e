"""The samplers by name: sd-scripts' --sample_sampler words -> the diffusers scheduler class
(and its extra config) each one makes. Torch-free, so the run config, the generation options
and the GUI list the same names; ti_core.generation.samplers builds the schedulers."""

from __future__ import annotations

from typing import Any

SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm_2": ("KDPM2DiscreteScheduler", {}),
    "dpm_2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    # diffusers refuses first-order DPM-Solver with its default final_sigmas_type "zero".
    "dpmsolver": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"},
    ),
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpmsingle": ("DPMSolverSinglestepScheduler", {}),
}
for _name in ("lms", "euler", "euler_a", "dpm_2", "dpm_2_a"):
    SAMPLERS[f"k_{_name}"] = SAMPLERS[_name]

SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)
