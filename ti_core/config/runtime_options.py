"""The options about how and where a run does its work rather than what it learns: attention,
torch.compile, memory, model loading, data-parallel and DeepSpeed settings ([training]), the
Hugging Face Hub uploads ([saving]) and dataset_class ([dataset]). Named and defaulted as
sd-scripts' flags; run_config mixes them into its sections. Where sd-scripts' default is "not
given" (None), the off value here is "" or 0, which the code treats the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from ti_core.config.options import FOLDER, opt

# sd-scripts' --dynamo_backend choices (the backends accelerate once listed); preflight checks
# that the installed PyTorch still has the one chosen.
# "no" is accelerate's (and kohya_ss GUI's default): nothing is compiled, even with torch_compile.
DYNAMO_BACKENDS = (
    "no", "eager", "aot_eager", "inductor", "aot_ts_nvfuser", "nvprims_nvfuser", "cudagraphs",
    "ofi", "fx2trt", "onnxrt",
)  # fmt: skip
OFFLOAD_DEVICES = ("", "cpu", "nvme")
HUB_REPO_TYPES = ("", "model", "dataset", "space")
HUB_VISIBILITIES = ("", "public", "private")


@dataclass
class SpeedOptions:
    """Attention, compilation and memory."""

    sdpa: bool = opt(
        False,
        "Use PyTorch's scaled-dot-product attention in the UNet (what runs without xformers "
        "anyway; xformers wins when both are set, as in sd-scripts).",
    )
    torch_compile: bool = opt(
        False,
        "Compile the UNet once with torch.compile before training (the first steps, and the "
        "first step of each new bucket size, are slow while it compiles).",
    )
    dynamo_backend: str = opt(
        "inductor",
        "torch.compile backend for torch_compile (eager: no code generation, for checking; no: "
        "nothing is compiled, as in accelerate).",
        choices=DYNAMO_BACKENDS,
    )
    highvram: bool = opt(
        False,
        "Machines with plenty of VRAM: keep the VAE and its memory on the GPU after caching "
        "latents instead of freeing them (no effect on the CPU).",
    )
    disable_mmap_load_safetensors: bool = opt(
        False,
        "Read .safetensors model files whole instead of memory-mapping them (faster on WSL "
        "and some network drives).",
    )
    fp8_base: bool = opt(
        False,
        "Accepted for sd-scripts command lines; no effect in Textual Inversion (sd-scripts' "
        "Textual Inversion does not use it either).",
    )
    fused_backward_pass: bool = opt(
        False,
        "Accepted for sd-scripts command lines; no effect in Textual Inversion (sd-scripts "
        "fuses it for SDXL fine-tuning only).",
    )


@dataclass
class DistributedOptions:
    """Data-parallel runs (accelerate launch / torchrun with several processes)."""

    ddp_timeout: int = opt(
        0,
        "Minutes the processes wait for each other before giving up (0 = PyTorch's default).",
        min=0,
    )
    ddp_gradient_as_bucket_view: bool = opt(
        False,
        "sd-scripts' DistributedDataParallel setting; the few trained vectors are averaged "
        "without DDP here, so it has no effect (the log says so).",
    )
    ddp_static_graph: bool = opt(
        False,
        "sd-scripts' DistributedDataParallel setting; no effect here for the same reason.",
    )


@dataclass
class DeepSpeedOptions:
    """DeepSpeed ZeRO (needs the deepspeed package: pip install deepspeed)."""

    deepspeed: bool = opt(False, "Train with DeepSpeed (needs the deepspeed package).")
    zero_stage: int = opt(2, "DeepSpeed ZeRO stage.", choices=(0, 1, 2, 3))
    offload_optimizer_device: str = opt(
        "", "Offload the optimizer state to cpu or nvme (ZeRO stages 2 and 3).",
        choices=OFFLOAD_DEVICES,
    )  # fmt: skip
    offload_optimizer_nvme_path: str = opt(
        "", "NVMe folder for offload_optimizer_device = nvme (ZeRO stage 3).", path=FOLDER
    )
    offload_param_device: str = opt(
        "", "Offload the parameters to cpu or nvme (ZeRO stage 3).", choices=OFFLOAD_DEVICES
    )
    offload_param_nvme_path: str = opt(
        "", "NVMe folder for offload_param_device = nvme (ZeRO stage 3).", path=FOLDER
    )
    zero3_init_flag: bool = opt(False, "Build the model under deepspeed.zero.Init (ZeRO stage 3).")
    zero3_save_16bit_model: bool = opt(False, "Gather 16-bit weights when saving (ZeRO stage 3).")
    fp16_master_weights_and_gradients: bool = opt(
        False,
        "Keep fp16 master weights and gradients (DeepSpeed, ZeRO stage 2 with "
        "offload_optimizer_device = cpu only).",
    )


@dataclass
class HubOptions:
    """Uploads to the Hugging Face Hub; checked (reachable, token accepted) before training."""

    huggingface_repo_id: str = opt(
        "",
        "Upload every saved embedding to this Hub repository (user/name; made if missing).",
    )
    huggingface_repo_type: str = opt(
        "", "Kind of Hub repository (empty: model).", choices=HUB_REPO_TYPES
    )
    huggingface_path_in_repo: str = opt(
        "", "Folder in the repository for the uploads (empty: the top)."
    )
    huggingface_token: str = opt(
        "",
        "Hugging Face token with write access (empty: HF_TOKEN or `hf auth login`); never "
        "written to the run's config.toml.",
    )
    huggingface_repo_visibility: str = opt(
        "",
        "Visibility of a repository the run makes: public, or private (empty = private).",
        choices=HUB_VISIBILITIES,
    )
    save_state_to_huggingface: bool = opt(
        False, "Also upload the resumable state folders (with save_state / "
        "save_state_on_train_end).",
    )  # fmt: skip
    resume_from_huggingface: bool = opt(
        False,
        "resume names a state on the Hub: repo_id/path_in_repo[:revision[:repo_type]] "
        "(e.g. me/runs/mychar4-step00000500-state:main:model).",
    )
    async_upload: bool = opt(
        False,
        "Upload in the background while training goes on (the run waits for the uploads "
        "at the end).",
    )


@dataclass
class DatasetClassOption:
    """[dataset] dataset_class: images and captions from your own Python class."""

    dataset_class: str = opt(
        "",
        "Train on your own dataset class, package.module.Class (importable from the working "
        "folder or PYTHONPATH), instead of image folders. It is built as Class(tokenizer, "
        "max_token_length, resolution, debug_dataset); len() is the batches per epoch; item i "
        "is a dict with images (float tensor B x 3 x H x W in [-1, 1]) and captions (B strings "
        "using the token string), optionally loss_weights (B); set_current_epoch(n), if "
        "present, is called before each epoch.",
    )
