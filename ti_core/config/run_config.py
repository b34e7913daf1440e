"""The one typed config of a training run: sections of fields named as sd-scripts' arguments.

Loading, saving, validation and the CLI flags all read the field declarations here
(type, default, help, limits, path-ness), so adding an option is one field (config/options.py
declares, config/toml_io.py reads and writes). The [dataset] keys a dataset TOML shares are
declared in data/spec.py (BucketOptions, CaptionOptions) and inherited here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ti_core.config.options import FILE, FILE_OR_FOLDER, FOLDER, FieldInfo, fields_by_name, opt
from ti_core.config.runtime_options import (
    DatasetClassOption,
    DeepSpeedOptions,
    DistributedOptions,
    HubOptions,
    SpeedOptions,
)
from ti_core.config.saving_options import ModelSpecOptions, RunLogOptions
from ti_core.config.training_options import LossOptions, NoiseOptions
from ti_core.data.spec import BucketOptions, CaptionOptions, MaskOptions, ValidationOptions
from ti_core.errors import ConfigError
from ti_core.generation.sampler_names import SAMPLER_NAMES
from ti_core.models.checkpoint_info import WEIGHT_FILE_SUFFIXES
from ti_core.training.optim_args import LR_SCHEDULERS, OPTIMIZER_TYPES

SCHEMA_VERSION = 1
__all__ = ["Config", "ConfigError", "FIELDS", "FieldInfo", "SCHEMA_VERSION", "SECTIONS"]


@dataclass
class ModelConfig:
    pretrained_model_name_or_path: str = opt(
        "",
        "Base model: a diffusers folder, a .safetensors/.ckpt checkpoint, a hub id, "
        "or demo:sd1 / demo:sd2 / demo:sdxl for the tiny built-in demo model.",
        path=FILE_OR_FOLDER,
        suffixes=(".safetensors", ".ckpt"),
        hub_id=True,
    )
    v2: bool = opt(False, "The model is Stable Diffusion 2.x (detected from a checkpoint's keys).")
    v_parameterization: bool = opt(
        False, "The model predicts v (SD 2.x 768-v). Detected where the file says so."
    )
    vae: str = opt(
        "",
        "A separate VAE (file or diffusers folder) to use instead of the model's.",
        path=FILE_OR_FOLDER,
        suffixes=WEIGHT_FILE_SUFFIXES,
        hub_id=True,
    )
    clip_skip: int = opt(
        1,
        "Use the output of the N-th text encoder layer from the end.",
        min=1,
        max=12,
    )
    max_token_length: int = opt(
        75,
        "Caption token budget: 75, 150 or 225 (longer captions are chunked).",
        choices=(75, 150, 225),
    )
    lowram: bool = opt(
        False,
        "Load the model straight into GPU memory, not RAM first (for machines with more VRAM "
        "than RAM, e.g. Colab).",
    )
    no_half_vae: bool = opt(False, "Keep the VAE in float32 under mixed precision.")
    tokenizer_cache_dir: str = opt(
        "", "sd-scripts' tokenizer folder: a single-file model's tokenizer is read from it, or "
        "saved there when missing (sd-scripts then trains offline with it too).",
        path=FOLDER, made_by_run=True,
    )  # fmt: skip


@dataclass
class DatasetSources:
    """Where a run's images are: the first [dataset] options."""

    dataset_config: str = opt(
        "",
        "sd-scripts dataset TOML ([general], [[datasets]], [[datasets.subsets]]).",
        path=FILE,
        suffixes=(".toml", ".json"),
    )
    train_data_dir: str = opt(
        "", "Folder of DreamBooth-style subfolders named N_name (N = repeats).", path=FOLDER
    )
    reg_data_dir: str = opt("", "Folder of regularization images (N_name subfolders).", path=FOLDER)
    in_json: str = opt(
        "", "Fine-tuning metadata JSON with captions.", path=FILE, suffixes=(".json",)
    )
    conditioning_data_dir: str = opt(
        "",
        "Folder of loss masks for train_data_dir's (or in_json's) images, one per image with "
        "its file name stem, flat or in subfolders named like the image folders: the red "
        "channel (or grey) is each pixel's loss weight, black 0 to white 1. Needs masked_loss; "
        "in a dataset TOML, set it per [[datasets.subsets]] instead.",
        path=FOLDER,
    )


@dataclass
class DatasetConfig(
    MaskOptions, CaptionOptions, ValidationOptions, BucketOptions, DatasetClassOption,
    DatasetSources,
):  # fmt: skip
    """[dataset]. A dataclass takes its bases' fields from the right, so the options come in
    this order: DatasetSources; BucketOptions, CaptionOptions and MaskOptions, the keys shared
    with a dataset TOML (declared once, in data/spec.py, where the TOML reader reads them too);
    then the run's own below. A dataset TOML's values win over the shared ones."""

    add_missing_token: bool = opt(
        False,
        "Put the token string in front of captions that lack it, instead of stopping "
        "with a list of those captions.",
    )
    train_batch_size: int = opt(1, "Images per step (a dataset TOML's batch_size wins).", min=1)
    cache_latents: bool = opt(False, "Encode every image once before training.")
    cache_latents_to_disk: bool = opt(False, "Keep the latent cache in files next to the images.")
    vae_batch_size: int = opt(1, "Images encoded at once while caching latents.", min=1)
    max_data_loader_n_workers: int = opt(0, "Worker processes loading images.", min=0)
    persistent_data_loader_workers: bool = opt(False, "Keep the loader's worker processes "
                                               "from one epoch to the next.")  # fmt: skip
    skip_cache_check: bool = opt(False, "Trust latent cache files beside the images unchecked "
                                 "(their image, bucket, VAE): stale ones train stale.")  # fmt: skip
    dataset_repeats: int = opt(1, "Repeats of an in_json dataset's images; also the num_repeats "
                               "of dataset TOML subsets that set none.", min=1)  # fmt: skip
    caption_extention: str = opt("", "sd-scripts' old spelling of caption_extension: sets it "
                                 "(both set, differing: an error).")  # fmt: skip
    use_object_template: bool = opt(
        False, "Ignore captions; use 'a photo of a {}' style templates."
    )
    use_style_template: bool = opt(
        False, "Ignore captions; use 'a painting in the style of {}' templates."
    )
    debug_dataset: bool = opt(
        False,
        "Print each caption's input ids (new tokens are >= 49408) and stop.",
    )


@dataclass
class TokenConfig:
    token_string: str = opt("", "The made-up word captions use for the concept (e.g. mychar4).")
    init_word: str = opt("", "A word close to the concept; the new vectors start from it.")
    num_vectors_per_token: int = opt(
        1, "How many vectors (prompt tokens) the embedding uses.", min=1, max=75
    )
    weights: str = opt(
        "",
        "Start from an existing embedding file.",
        path=FILE,
        suffixes=(".safetensors", ".pt", ".bin"),
    )
    preserve_embedding_norm: bool = opt(
        False,
        "After every step, rescale each trained vector to the vocabulary's median norm "
        "(OneTrainer's option): keeps the embedding from swallowing the prompt.",
    )
    max_embedding_norm: float = opt(
        0.0,
        "After every step, shrink a trained vector whose norm is above this (0 = off).",
        min=0.0,
    )


@dataclass
class TrainingSteps:
    """[training]'s first options: how long, how precise, how the validation is measured."""

    max_train_steps: int = opt(1600, "Steps to train.", min=1)
    max_train_epochs: int = opt(0, "Epochs to train (overrides max_train_steps when set).", min=0)
    validate_every_n_steps: int = opt(
        0,
        "Measure the validation loss every N steps (0 = off). With it or validate_every_n_epochs "
        "on, it is also measured at the start, at every saved copy and at the end.",
        min=0,
    )
    validate_every_n_epochs: int = opt(
        1,
        "Measure the validation loss every N epochs (0 = off; both 0 = no validation).",
        min=0,
    )
    max_validation_steps: int = opt(
        0, "Validation batches per measurement at most (0 = all of the validation images).", min=0
    )
    gradient_accumulation_steps: int = opt(1, "Batches summed per optimizer step.", min=1)
    gradient_checkpointing: bool = opt(False, "Recompute activations to save memory.")
    mixed_precision: str = opt("no", "Compute precision.", choices=("no", "fp16", "bf16"))
    full_fp16: bool = opt(
        False,
        "Keep the text encoder(s) in fp16 too, not float32 (needs mixed_precision fp16; "
        "saves memory). The trained vectors stay float32.",
    )
    full_bf16: bool = opt(
        False,
        "Keep the text encoder(s) in bf16 too, not float32 (needs mixed_precision bf16; "
        "saves memory). The trained vectors stay float32.",
    )
    seed: int = opt(0, "Random seed: the same seed gives the same batches and vectors.", min=0)
    prior_loss_weight: float = opt(1.0, "Loss weight of regularization images.", min=0.0)
    max_grad_norm: float = opt(1.0, "Clip gradients to this norm (0 = off).", min=0.0)
    xformers: bool = opt(False, "Use xformers attention (CUDA only).")
    mem_eff_attn: bool = opt(False, "Use memory-efficient attention.")


@dataclass
class TrainingConfig(
    DeepSpeedOptions, DistributedOptions, SpeedOptions, LossOptions, NoiseOptions, TrainingSteps
):
    """[training]. A dataclass takes its bases' fields from the right: TrainingSteps first, the
    noise and loss options (training_options.py), then speed and devices (runtime_options.py)."""


@dataclass
class OptimizerConfig:
    """[optimizer]: sd-scripts' optimizer and schedule options, same names and meaning."""

    optimizer_type: str = opt(
        "AdamW",
        f"Optimizer, by sd-scripts' name in any case ({', '.join(OPTIMIZER_TYPES)}), a "
        "torch.optim class (e.g. RAdam) or any module.Class taking (params, lr=...).",
    )
    use_8bit_adam: bool = opt(False, "sd-scripts' older switch for optimizer_type AdamW8bit.")
    use_lion_optimizer: bool = opt(False, "sd-scripts' older switch for optimizer_type Lion.")
    optimizer_args: list[str] = opt([], "Extra optimizer arguments as key=value.")
    learning_rate: float = opt(
        5e-3,
        "Learning rate; or AUTOMATIC1111's piecewise rates as text, e.g. "
        '"0.005:100, 1e-3:1000, 1e-5" (0.005 until step 100, then 1e-3 until 1000, then 1e-5).',
        min=0.0,
        text="piecewise learning rate",
    )
    lr_scheduler: str = opt(
        "constant",
        "Learning-rate schedule (schedule-free optimizers keep their own; adafactor: "
        "Adafactor's relative step size).",
        choices=LR_SCHEDULERS,
    )
    lr_warmup_steps: float = opt(
        0.0, "Warm-up steps; below 1, a share of all steps (0.1 = the first tenth).", min=0.0
    )
    lr_decay_steps: float = opt(
        0.0, "Decay steps of warmup_stable_decay; below 1, a share of all steps.", min=0.0
    )
    lr_scheduler_num_cycles: int = opt(
        1,
        "Restarts of cosine_with_restarts; half-cosine waves of cosine_with_min_lr and of "
        "warmup_stable_decay's decay.",
        min=1,
    )
    lr_scheduler_power: float = opt(1.0, "Power of the polynomial schedule.", min=0.0)
    lr_scheduler_timescale: int = opt(
        0, "Timescale of inverse_sqrt (0 = the warm-up steps, or 10000 without warm-up).", min=0
    )
    lr_scheduler_min_lr_ratio: float = opt(
        0.0,
        "Lowest rate of cosine_with_min_lr and warmup_stable_decay, as a share of the "
        "learning rate.",
        min=0.0,
    )
    lr_scheduler_type: str = opt(
        "",
        "A scheduler class instead of lr_scheduler: a torch.optim.lr_scheduler class "
        "(e.g. StepLR) or any module.Class, built with lr_scheduler_args.",
    )
    lr_scheduler_args: list[str] = opt(
        [],
        "Extra schedule arguments as key=value (e.g. step_size=100 for StepLR, "
        "step_rules='1:100,0.1' for piecewise_constant).",
    )


@dataclass
class SavingFiles:
    """What the run writes and when: the first [saving] options."""

    output_dir: str = opt(
        "output",
        "Run folder: embeddings, samples, logs and config.toml go here.",
        path=FOLDER,
        made_by_run=True,
    )
    output_name: str = opt(
        "",
        "Embedding file name (the trigger word); defaults to token_string.",
    )
    save_model_as: str = opt(
        "safetensors",
        "Embedding file format.",
        choices=("safetensors", "pt", "ckpt"),
    )
    save_precision: str = opt(
        "float",
        "Precision of saved vectors.",
        choices=("float", "fp16", "bf16"),
    )
    save_every_n_steps: int = opt(0, "Save a numbered copy every N steps (0 = off).", min=0)
    save_every_n_epochs: int = opt(0, "Save a numbered copy every N epochs (0 = off).", min=0)
    save_n_epoch_ratio: int = opt(
        0, "Save about N epoch copies in all: sets save_every_n_epochs to epochs / N (0 = off).",
        min=0,
    )  # fmt: skip
    save_last_n_steps: int = opt(
        0, "Keep only the step copies made in the last N steps, the one N steps back "
        "included, as sd-scripts does (0 = keep all).", min=0,
    )  # fmt: skip
    save_last_n_epochs: int = opt(
        0, "Keep only the epoch copies of the last N epochs (0 = keep all).", min=0,
    )  # fmt: skip
    embedding_format: str = opt(
        "kohya",
        "Layout of the embedding file: kohya (sd-scripts; read by AUTOMATIC1111, ComfyUI and "
        "sd-scripts), a1111 (AUTOMATIC1111's .pt) or diffusers (learned_embeds).",
        choices=("kohya", "a1111", "diffusers"),
    )
    save_state: bool = opt(
        False, "Also save resumable training state: state/, and with each numbered copy "
        "<output_name>-step00000500-state or <output_name>-000002-state.",
    )  # fmt: skip
    save_state_on_train_end: bool = opt(
        False, "Save resumable state at the end (state/ and <output_name>-state), even "
        "without save_state.",
    )  # fmt: skip
    save_last_n_steps_state: int = opt(
        0, "Like save_last_n_steps, for the numbered state folders (0 = save_last_n_steps).",
        min=0,
    )  # fmt: skip
    save_last_n_epochs_state: int = opt(
        0, "Keep only the epoch state folders of the last N epochs (0 = save_last_n_epochs).",
        min=0,
    )  # fmt: skip
    resume: str = opt("", "Resume from a saved state folder.", path=FOLDER)
    output_config: bool = opt(
        False, "Write the resolved options to the --config_file path (which must not exist "
        "yet) and stop without training.",
    )  # fmt: skip


@dataclass
class SavingConfig(HubOptions, RunLogOptions, ModelSpecOptions, SavingFiles):
    """[saving]: the files (SavingFiles), the model-spec metadata written into them and the
    run's logs (saving_options.py), the Hub uploads (runtime_options.py)."""


@dataclass
class SamplingConfig:
    sample_prompts: str = opt(
        "",
        "Prompts file for sample images (.txt, one prompt per line).",
        path=FILE,
        suffixes=(".txt", ".toml", ".json"),
        made_by_run=True,
    )
    sample_every_n_steps: int = opt(0, "Make samples every N steps (0 = off).", min=0)
    sample_every_n_epochs: int = opt(0, "Make samples every N epochs (0 = off).", min=0)
    sample_at_first: bool = opt(False, "Also make samples before the first step.")
    sample_sampler: str = opt("ddim", "Sampler for sample images.", choices=SAMPLER_NAMES)
    clip_model: str = opt(
        "",
        "A CLIP model folder on disk (e.g. openai/clip-vit-large-patch14, downloaded) to score "
        "each saved step as the Textual Inversion paper does: CLIP-I, how alike images of "
        "'a photo of <token>' and the training images are, and CLIP-T, how well images follow "
        "edit prompts. Both are raw cosines from -1 to 1 (not CLIPScore's x100 or x2.5); higher "
        "is better. Each score makes 4 images at the training resolution. Empty = no scores.",
        path=FOLDER,
    )


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    token: TokenConfig = field(default_factory=TokenConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    saving: SavingConfig = field(default_factory=SavingConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


SECTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Config))


FIELDS: dict[str, FieldInfo] = fields_by_name(Config)

# Options that hold a secret -> the environment variable their library reads it from: never
# written to a run folder or shown in a command line; the GUI hands them to its child this way.
SECRET_OPTIONS: dict[str, str] = {"wandb_api_key": "WANDB_API_KEY", "huggingface_token": "HF_TOKEN"}
