"""sd-scripts' speed, distributed, DeepSpeed, Hub and dataset_class options: each is a train
flag and a TOML key; those that act here act (SDPA, torch.compile, no mmap, dataset_class),
those that cannot say so once, and what cannot work stops before any model loads."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from PIL import Image

from ti_core.cli.main import main
from ti_core.config import runtime_options
from ti_core.config.run_config import FIELDS, Config
from ti_core.config.toml_io import config_from_toml, save_config
from ti_core.embeddings.files import read_embedding
from ti_core.models.demo import demo_dir
from ti_core.run_folder.writer import read_events

RUNTIME_OPTIONS = [
    f.name
    for cls in (runtime_options.SpeedOptions, runtime_options.DistributedOptions,
                runtime_options.DeepSpeedOptions, runtime_options.HubOptions,
                runtime_options.DatasetClassOption)
    for f in fields(cls)
]  # fmt: skip
QUICK = ["--max_train_steps", "2", "--validate_every_n_epochs", "0"]


def demo_args(run_dir: Path) -> list[str]:
    return ["train", "--pretrained_model_name_or_path", "demo:sd1",
            "--train_data_dir", "demo:sd1", "--caption_extension", ".txt",
            "--resolution", "64", "--token_string", "demotoy", "--init_word", "toy",
            "--output_dir", str(run_dir)]  # fmt: skip


def other_value(name: str):
    """A value of the option that is not its default."""
    info = FIELDS[name]
    if info.type is bool:
        return True
    if info.choices:
        return next(choice for choice in reversed(info.choices) if choice != info.default)
    if info.type is int:
        return info.default + 3
    return f"x_{name}"


def as_flags(values: dict) -> list[str]:
    flags = []
    for name, value in values.items():
        flags += [f"--{name}"] if value is True else [f"--{name}", str(value)]
    return flags


def test_every_option_is_a_train_flag_and_a_toml_key(capsys, tmp_path):
    values = {name: other_value(name) for name in RUNTIME_OPTIONS}
    assert main(["print-config", *as_flags(values)]) == 0
    printed = tomllib.loads(capsys.readouterr().out)
    for name, value in values.items():
        assert printed[FIELDS[name].section][name] == value, name
    # our sectioned TOML and sd-scripts' flat --config_file read them back the same
    sectioned = config_from_toml(tomllib_dump(printed))
    flat = config_from_toml("\n".join(f"{n} = {toml_value(v)}" for n, v in values.items()))
    for config in (sectioned, flat):
        for name, value in values.items():
            assert getattr(getattr(config, FIELDS[name].section), name) == value, name
    # the defaults are the off values: a default config trains as before
    assert not any(getattr(Config().training, n) for n in ("sdpa", "torch_compile", "deepspeed"))


def tomllib_dump(data: dict) -> str:
    import tomli_w

    return tomli_w.dumps(data)


def toml_value(value) -> str:
    return "true" if value is True else repr(value) if isinstance(value, str) else str(value)


def test_sdpa_sets_the_attention_processors(caplog):
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    from ti_core.embeddings.specs import embedding_specs
    from ti_core.embeddings.tokens import add_embeddings, text_parts
    from ti_core.models.loading import load_model
    from ti_core.training.setup import choose_precision, prepare_model

    config = Config()
    config.token.token_string, config.training.sdpa = "demotoy", True
    loaded = load_model("demo:sd1")
    loaded.pipeline.unet.set_attn_processor(AttnProcessor())  # the classic, non-SDPA one
    tokenizers, encoders = text_parts(loaded.pipeline)
    embeddings = embedding_specs(config)
    placeholders = add_embeddings(tokenizers, encoders, embeddings)
    precision = choose_precision("no", torch.device("cpu"))
    with caplog.at_level("INFO", logger="ti_core"):
        model = prepare_model(
            loaded, embeddings, placeholders, tokenizers, encoders, config, precision
        )
    processors = loaded.pipeline.unet.attn_processors.values()
    assert processors and all(isinstance(p, AttnProcessor2_0) for p in processors)
    assert model.attention == "sdpa"
    assert "scaled-dot-product attention" in caplog.text


@pytest.fixture()
def two_bucket_dataset(tmp_path) -> Path:
    """Two images whose aspect ratios land in two buckets (128x128 and 192x64)."""
    folder = tmp_path / "data" / "1_demotoy toy"
    folder.mkdir(parents=True)
    for name, size in (("square", (128, 128)), ("wide", (192, 64))):
        Image.new("RGB", size, (200, 120, 40)).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text("a photo of demotoy toy")
    return folder.parent


def test_torch_compile_eager_compiles_the_unet_once_and_trains_two_bucket_sizes(
    tmp_path, two_bucket_dataset
):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    run_dir = tmp_path / "run"
    args = demo_args(run_dir)
    args[args.index("demo:sd1", 3)] = str(two_bucket_dataset)  # the train_data_dir
    args[args.index("64")] = "128"  # the resolution
    buckets = ["--enable_bucket", "--min_bucket_reso", "64", "--max_bucket_reso", "256"]
    code = main([*args, *QUICK, *buckets, "--torch_compile", "--dynamo_backend", "eager"])
    try:
        assert code == 0
        log = (run_dir / "train.log").read_text()
        assert log.count("torch_compile: the UNet is compiled") == 1
        assert "2 steps (1 epochs of 2 batches)" in log  # one batch per bucket
        assert counters["stats"]["unique_graphs"] >= 2  # the compiled UNet ran at both sizes
        steps = [e for e in read_events(run_dir / "events.jsonl") if e["type"] == "step"]
        assert [e["step"] for e in steps] == [1, 2]
        assert all(torch.isfinite(torch.tensor(e["loss"])) for e in steps)
    finally:
        torch._dynamo.reset()


def test_an_unknown_dynamo_backend_stops_before_loading(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main([*demo_args(run_dir), "--torch_compile", "--dynamo_backend", "nvprims_nvfuser"])
    assert code == 2
    error = capsys.readouterr().err
    assert "dynamo_backend = 'nvprims_nvfuser'" in error and "inductor" in error
    assert not run_dir.exists()


def test_disable_mmap_loads_a_single_file_the_same(caplog, tmp_path):
    from ti_core.models.loading import load_model

    path = tmp_path / "model.safetensors"  # a copy no other test has mapped
    shutil.copyfile(demo_dir("sd1") / "model.safetensors", path)
    for config in (demo_dir("sd1") / "model").rglob("*.json"):  # its configs, beside it
        target = tmp_path / "model" / config.relative_to(demo_dir("sd1") / "model")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(config, target)
    with caplog.at_level("INFO", logger="ti_core"):
        unmapped = load_model(str(path), disable_mmap=True)
    if Path("/proc/self/maps").exists():  # Linux shows what a process has mapped
        assert str(path) not in Path("/proc/self/maps").read_text()
    mapped = load_model(str(path))
    for part in ("unet", "vae", "text_encoder"):
        ours = getattr(unmapped.pipeline, part).state_dict()
        theirs = getattr(mapped.pipeline, part).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[key], theirs[key]) for key in ours), part
    assert "without memory-mapping" in caplog.text


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("deepspeed") is not None,
    reason="deepspeed is installed here",
)
def test_deepspeed_without_the_package_stops_before_training(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main([*demo_args(run_dir), "--deepspeed", "--zero_stage", "3"]) == 2
    assert "pip install deepspeed" in capsys.readouterr().err
    assert not run_dir.exists()


def test_deepspeed_plugin_carries_the_options_as_sd_scripts_sets_them():
    from ti_core.training.distributed import Team, deepspeed_plugin

    config = Config()
    training = config.training
    training.deepspeed, training.zero_stage, training.mixed_precision = True, 2, "fp16"
    training.offload_optimizer_device, training.fp16_master_weights_and_gradients = "cpu", True
    config.dataset.train_batch_size, training.gradient_accumulation_steps = 2, 3
    ds = deepspeed_plugin(config, Team(size=4, rank=0)).deepspeed_config
    assert ds["zero_optimization"]["stage"] == 2
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert (ds["train_micro_batch_size_per_gpu"], ds["train_batch_size"]) == (6, 24)
    assert ds["fp16"]["enabled"] and ds["fp16"]["fp16_master_weights_and_grads"]
    assert ds["gradient_clipping"] == 1.0
    assert deepspeed_plugin(Config(), Team()) is None


def test_a_hub_upload_offline_stops_before_training(tmp_path, capsys):
    run_dir = tmp_path / "run"  # conftest sets HF_HUB_OFFLINE=1
    assert main([*demo_args(run_dir), "--huggingface_repo_id", "me/demotoy"]) == 2
    error = capsys.readouterr().err
    assert "huggingface_repo_id = 'me/demotoy'" in error and "HF_HUB_OFFLINE" in error
    assert not run_dir.exists()


def test_an_unreachable_hub_stops_before_the_model_loads(tmp_path, demo_cache):
    with socket.socket() as probe:  # a local port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    run_dir = tmp_path / "run"
    env = {key: value for key, value in os.environ.items()
           if key not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}  # fmt: skip
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_TOKEN="hf_not_a_real_token",
               HF_HOME=str(tmp_path / "hf"), TI_TRAINER_CACHE=str(demo_cache))  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "ti_core", *demo_args(run_dir), "--huggingface_repo_id",
         "me/demotoy", "--resume_from_huggingface", "--resume", "me/runs/state:main"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"cannot reach the Hugging Face Hub at http://127.0.0.1:{port}" in done.stderr
    assert "loaded Stable Diffusion" not in done.stderr and not run_dir.exists()


def test_hub_token_stays_out_of_config_toml_and_a_failed_upload_is_a_warning(tmp_path, caplog):
    from ti_core.training.hub import HubUploads, RemoteState, parse_remote_state

    config = Config()
    config.saving.huggingface_repo_id, config.saving.huggingface_token = "me/x", "hf_secret"
    uploads = HubUploads(config)
    save_config(config, tmp_path / "config.toml")
    assert "hf_secret" not in (tmp_path / "config.toml").read_text()
    (tmp_path / "demotoy.safetensors").write_bytes(b"...")
    with caplog.at_level("WARNING", logger="ti_core"):
        uploads.upload(tmp_path / "demotoy.safetensors")  # offline here: it cannot go
    assert "uploading demotoy.safetensors to the Hub (me/x) failed" in caplog.text
    remote = parse_remote_state("me/runs/a/b-state:v1:dataset")
    assert remote == RemoteState("me/runs", "a/b-state", "v1", "dataset")
    assert parse_remote_state("me/runs/s:main").repo_type == "model"  # sd-scripts' reading


def test_dataset_class_with_a_bad_name_is_refused_clearly(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "my_toys.py").write_text("class ToyDataset:\n    pass\n")
    cases = {
        "ToyDataset": "expected package.module.Class",
        "no_such_module.ToyDataset": "cannot import the module 'no_such_module'",
        "my_toys.ToyDatset": "Did you mean my_toys.ToyDataset?",
        "my_toys.ToyDataset": "lacks __len__, __getitem__",
    }
    for name, message in cases.items():
        run_dir = tmp_path / "run"
        assert main([*demo_args(run_dir), "--dataset_class", name]) == 2, name
        assert message in capsys.readouterr().err, name
        assert not run_dir.exists()


TOY_DATASET = textwrap.dedent('''
    import torch

    class ToyDataset:
        """Two batches of two flat 64-px images, captioned with the token string."""

        def __init__(self, tokenizer, max_token_length, resolution, debug_dataset):
            self.resolution, self.epochs = resolution, []

        def __len__(self):
            return 2

        def set_current_epoch(self, epoch):
            self.epochs.append(epoch)

        def __getitem__(self, index):
            width, height = self.resolution
            images = torch.full((2, 3, height, width), 0.5 - index)
            return {"images": images, "captions": ["a photo of demotoy toy"] * 2}
''')


def test_dataset_class_trains_on_the_batches_it_makes(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "toy_datasets.py").write_text(TOY_DATASET)
    run_dir = tmp_path / "run"
    args = demo_args(run_dir)
    del args[3:5]  # no train_data_dir: the class makes the images
    code = main([*args, *QUICK, "--dataset_class", "toy_datasets.ToyDataset"])
    assert code == 0
    log = (run_dir / "train.log").read_text()
    assert "dataset_class toy_datasets.ToyDataset: 2 batches per epoch" in log
    assert "2 steps (1 epochs of 2 batches)" in log
    assert read_embedding(run_dir / "demotoy.safetensors").vectors[0].shape == (1, 32)
    debug = main([*args, "--dataset_class", "toy_datasets.ToyDataset", "--debug_dataset"])
    assert debug == 2  # said plainly, not "no images" from the empty folder list


def test_every_save_is_uploaded_in_order_and_a_failed_upload_does_not_stop_training(tmp_path):
    """Past the preflight (which stops an offline run), each saved file and state folder is
    handed to the Hub; offline, each upload fails as a warning and the run finishes."""
    from ti_core.data.run_data import check_data
    from ti_core.run_folder.writer import RunFolder
    from ti_core.training.loop import train

    config = Config()
    config.model.pretrained_model_name_or_path = "demo:sd1"
    data, token, saving = config.dataset, config.token, config.saving
    data.train_data_dir, data.caption_extension, data.resolution = "demo:sd1", ".txt", "64"
    token.token_string, token.init_word = "demotoy", "toy"
    config.training.max_train_steps, config.training.validate_every_n_epochs = 2, 0
    saving.output_dir, saving.save_every_n_steps = str(tmp_path / "run"), 1
    saving.save_state = saving.save_state_to_huggingface = saving.async_upload = True
    saving.huggingface_repo_id, saving.huggingface_token = "me/demotoy", "hf_secret"
    specs, report = check_data(config)
    with RunFolder(saving.output_dir) as run:
        run.attach_logging()
        assert train(config, specs, run, report.entries).name == "demotoy.safetensors"
    run_dir = tmp_path / "run"
    events = read_events(run_dir / "events.jsonl")
    warnings = [e["message"] for e in events if e["type"] == "warning"]
    failed = [m.split(" to the Hub")[0] for m in warnings if "Hub (me/demotoy) failed" in m]
    assert failed == [
        "uploading demotoy-step00000001.safetensors", "uploading demotoy-step00000001-state",
        "uploading demotoy-step00000002.safetensors", "uploading demotoy-step00000002-state",
        "uploading demotoy.safetensors", "uploading demotoy-state",
    ]  # fmt: skip
    assert events[-1]["type"] == "done" and events[-1]["reason"] == "finished"
    assert "hf_secret" not in (run_dir / "config.toml").read_text()


def test_options_with_nothing_to_act_on_say_so_once(tmp_path):
    run_dir = tmp_path / "run"
    code = main([*demo_args(run_dir), *QUICK, "--fp8_base", "--fused_backward_pass",
                 "--highvram", "--ddp_static_graph", "--ddp_timeout", "5"])  # fmt: skip
    assert code == 0
    log = (run_dir / "train.log").read_text()
    assert log.count("fp8_base: no effect in Textual Inversion") == 1
    assert log.count("fused_backward_pass: no effect in Textual Inversion") == 1
    assert log.count("ddp_timeout: a single process waits for no other") == 1
    warnings = [e["message"] for e in read_events(run_dir / "events.jsonl")
                if e["type"] == "warning"]  # fmt: skip
    assert sum("highvram" in message for message in warnings) == 1
    assert sum("ddp_static_graph: no effect" in message for message in warnings) == 1
