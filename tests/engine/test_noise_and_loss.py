"""sd-scripts' noise, timestep and loss options act in a training step on the demo models, draw
only from the batch's seed, and are refused in the combinations sd-scripts refuses."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from ti_core.cli.main import main
from ti_core.config.run_config import Config
from ti_core.config.toml_io import config_from_toml, load_config
from ti_core.errors import ConfigError

SEED = 1234


@dataclasses.dataclass
class Step:
    config: Config
    model: object
    batch: dict
    precision: object
    loaded: object

    def scheduler(self, zero_terminal_snr: bool = False):
        from ti_core.training.diffusion import training_scheduler

        pipeline_scheduler = self.loaded.pipeline.scheduler
        v = self.loaded.v_parameterization
        return training_scheduler(pipeline_scheduler, v, zero_terminal_snr)

    def loss(self, scheduler=None, **options) -> float:
        from ti_core.training.loop import step_loss

        config = dataclasses.replace(
            self.config, training=dataclasses.replace(self.config.training, **options)
        )
        scheduler = scheduler or self.scheduler()
        with torch.no_grad():
            return float(step_loss(config, self.model, self.batch, self.precision, scheduler, SEED))


def demo_step(family: str) -> Step:
    from ti_core.data.run_data import dataset_specs
    from ti_core.embeddings.specs import embedding_specs
    from ti_core.embeddings.tokens import add_embeddings, text_parts
    from ti_core.models.loading import load_model
    from ti_core.training.setup import build_batches, choose_precision, prepare_model

    config = Config()
    config.dataset.train_data_dir, config.dataset.caption_extension = f"demo:{family}", ".txt"
    config.dataset.resolution, config.token.token_string = "64", "demotoy"
    config.token.init_word = "toy"
    loaded = load_model(f"demo:{family}")
    tokenizers, encoders = text_parts(loaded.pipeline)
    embeddings = embedding_specs(config)
    placeholders = add_embeddings(tokenizers, encoders, embeddings)
    precision = choose_precision("no", torch.device("cpu"))
    model = prepare_model(loaded, embeddings, placeholders, tokenizers, encoders, config, precision)
    batches, _ = build_batches(config, dataset_specs(config), model, precision)
    return Step(config, model, batches[0], precision, loaded)


@pytest.fixture(scope="module")
def sd1() -> Step:
    return demo_step("sd1")


def timesteps_seen(scheduler) -> list[int]:
    """Record the timesteps the step adds noise at."""
    seen: list[int] = []
    add_noise = scheduler.add_noise

    def spy(latents, noise, timesteps):
        seen.extend(timesteps.tolist())
        return add_noise(latents, noise, timesteps)

    scheduler.add_noise = spy
    return seen


def test_min_and_max_timestep_bound_what_is_trained(sd1):
    scheduler = sd1.scheduler()
    seen = timesteps_seen(scheduler)
    sd1.loss(scheduler, min_timestep=500, max_timestep=500)
    sd1.loss(scheduler, min_timestep=500, max_timestep=500)
    assert seen and set(seen) == {500}
    seen.clear()
    for _ in range(5):
        sd1.loss(scheduler, min_timestep=900, max_timestep=1000)
    assert all(900 <= t < 1000 for t in seen)


def test_each_noise_option_changes_the_step_and_draws_only_from_the_batch_seed(sd1):
    plain = sd1.loss()
    torch.manual_seed(99)  # the global generator must not matter
    assert sd1.loss() == plain
    noise_options = [
        {"noise_offset": 0.1},
        {"noise_offset": 0.1, "noise_offset_random_strength": True},
        {"noise_offset": 0.1, "adaptive_noise_scale": 0.5},
        {"multires_noise_iterations": 4},
        {"multires_noise_iterations": 4, "multires_noise_discount": 0.8},
        {"ip_noise_gamma": 0.5},
        {"ip_noise_gamma": 0.5, "ip_noise_gamma_random_strength": True},
    ]
    losses = []
    for options in noise_options:
        loss = sd1.loss(**options)
        torch.manual_seed(7)
        assert sd1.loss(**options) == loss, options
        losses.append(loss)
    assert len(set([plain, *losses])) == len(noise_options) + 1


def test_each_loss_option_changes_the_step(sd1):
    plain = sd1.loss()
    assert sd1.loss(loss_type="l2") == plain
    loss_options = [
        {"loss_type": "l1"},
        {"loss_type": "huber"},
        {"loss_type": "smooth_l1"},
        {"loss_type": "huber", "huber_schedule": "constant"},
        {"loss_type": "huber", "huber_schedule": "exponential"},
        {"loss_type": "huber", "huber_schedule": "constant", "huber_scale": 3.0},
        {"loss_type": "smooth_l1", "huber_c": 0.3},
        {"min_snr_gamma": 5.0},
        {"v_pred_like_loss": 0.5},
        {"debiased_estimation_loss": True},
    ]
    losses = [sd1.loss(**options) for options in loss_options]
    assert len(set([plain, *losses])) == len(loss_options) + 1
    # Huber with a threshold far above the errors is the squared error (sd-scripts' limit).
    near_l2 = sd1.loss(loss_type="huber", huber_schedule="constant", huber_c=50.0)
    assert near_l2 == pytest.approx(plain, rel=1e-3)


def test_zero_terminal_snr_trains_v_prediction_at_pure_noise():
    sd2 = demo_step("sd2")
    assert sd2.loaded.v_parameterization
    scheduler = sd2.scheduler()
    last = {"min_timestep": 999, "max_timestep": 999}
    plain = sd2.loss(scheduler, **last)
    assert float(scheduler.alphas_cumprod[-1]) > 0
    rescaled = sd2.loss(scheduler, zero_terminal_snr=True, **last)
    assert float(scheduler.alphas_cumprod[-1]) == 0.0  # the step rescaled the run's scheduler
    assert rescaled != plain and torch.isfinite(torch.tensor(rescaled))
    # scale_v_pred_loss_like_noise_pred weighs v-prediction's loss down by SNR / (SNR + 1).
    scaled = sd2.loss(sd2.scheduler(), scale_v_pred_loss_like_noise_pred=True, min_timestep=10)
    assert scaled < sd2.loss(sd2.scheduler(), min_timestep=10)


def test_options_load_from_an_sd_scripts_flat_config_and_train(tmp_path):
    flat = tmp_path / "sd-scripts.toml"
    flat.write_text(
        'loss_type = "smooth_l1"\nhuber_schedule = "exponential"\nhuber_c = 0.2\n'
        "multires_noise_iterations = 3\nip_noise_gamma = 0.1\nmin_timestep = 100\n"
        "max_timestep = 900\ndebiased_estimation_loss = true\nnoise_offset = 0.05\n"
        "adaptive_noise_scale = 0.01\nnoise_offset_random_strength = true\n"
    )
    training = load_config(flat).training
    assert (training.loss_type, training.huber_c, training.max_timestep) == ("smooth_l1", 0.2, 900)
    run_dir = tmp_path / "run"
    code = main(["train", "--config_file", str(flat), "--pretrained_model_name_or_path",
                 "demo:sd1", "--train_data_dir", "demo:sd1", "--caption_extension", ".txt",
                 "--resolution", "64", "--token_string", "demotoy", "--init_word", "toy",
                 "--output_dir", str(run_dir), "--max_train_steps", "2",
                 "--zero_terminal_snr"])  # fmt: skip
    assert code == 0
    saved = load_config(run_dir / "config.toml").training
    assert saved.multires_noise_iterations == 3 and saved.zero_terminal_snr


@pytest.mark.parametrize(
    ("toml", "names"),
    [
        ("adaptive_noise_scale = 0.1", ("adaptive_noise_scale", "noise_offset")),
        ("scale_v_pred_loss_like_noise_pred = true", ("scale_v_pred", "v_parameterization")),
        ("v_pred_like_loss = 0.1\nv_parameterization = true", ("v_pred_like_loss", "v_param")),
        ('loss_type = "huber"\nhuber_schedule = "exponential"\nhuber_c = 0.0', ("huber_c",)),
    ],
)
def test_combinations_sd_scripts_refuses_are_refused(toml, names):
    with pytest.raises(ConfigError) as error:
        config_from_toml(toml, "flat.toml")
    assert all(name in str(error.value) for name in names), str(error.value)


def test_allowed_neighbours_of_the_refused_combinations_load():
    config_from_toml("adaptive_noise_scale = -0.1\nnoise_offset = 0.1")
    config_from_toml("scale_v_pred_loss_like_noise_pred = true\nv_parameterization = true")
    config_from_toml('huber_c = 0.0\nhuber_schedule = "exponential"')  # l2 ignores huber_c
    for bad in ("min_timestep = 1000", "max_timestep = 0", 'loss_type = "l3"', "huber_c = -1"):
        with pytest.raises(ConfigError):
            config_from_toml(bad)


def test_sd_scripts_defaults(tmp_path: Path):
    t = Config().training
    assert (t.loss_type, t.huber_schedule, t.huber_c, t.huber_scale) == ("l2", "snr", 0.1, 1.0)
    assert (t.multires_noise_discount, t.min_timestep, t.max_timestep) == (0.3, 0, 1000)
