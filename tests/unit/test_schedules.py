"""Learning-rate schedules: sd-scripts' names and curves, warm-up, and AUTOMATIC1111's piecewise
rates ("0.005:100, 1e-3:1000, 1e-5")."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from ti_core.errors import ConfigError
from ti_core.training.optim import (
    PiecewiseRate,
    build_optimizer,
    build_scheduler,
    current_lr,
    parse_learning_rate,
)


def _parameter() -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.zeros(4, 32))  # a schedule does not look at the values


# ---- schedules ------------------------------------------------------------------------------


def _lrs(scheduler_name: str, steps=110, warmup=10, **kwargs) -> list[float]:
    """The lr each optimizer step uses, for steps 0..steps (base rate 0.01)."""
    optimizer = build_optimizer([_parameter()], "SGDNesterov", kwargs.pop("lr", 0.01), [])
    scheduler = build_scheduler(
        optimizer, scheduler_name, 0.01, steps, lr_warmup_steps=warmup, **kwargs
    )
    lrs = []
    for _ in range(steps + 1):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def _at(lrs, *steps):
    return pytest.approx([lrs[step] for step in steps], abs=1e-12)


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        # steps:                                     0     5      10    35      60     110
        ("constant", {"warmup": 0}, [0.01, 0.01, 0.01, 0.01, 0.01, 0.01]),
        ("constant_with_warmup", {}, [0.0, 0.005, 0.01, 0.01, 0.01, 0.01]),
        ("linear", {}, [0.0, 0.005, 0.01, 0.0075, 0.005, 0.0]),
        ("cosine", {}, [0.0, 0.005, 0.01, 0.005 * (1 + math.cos(math.pi / 4)), 0.005, 0.0]),
        # two cycles: down to 0 by step 60, restart at 0.01, down to 0 again
        ("cosine_with_restarts", {"lr_scheduler_num_cycles": 2}, [0, 0.005, 0.01, 0.005, 0.01, 0]),
        (
            "polynomial",
            {"lr_scheduler_power": 2.0},
            [0.0, 0.005, 0.01, (0.01 - 1e-7) * 0.75**2 + 1e-7, (0.01 - 1e-7) * 0.25 + 1e-7, 1e-7],
        ),
    ],
)
def test_each_schedule_follows_its_curve(name, kwargs, expected):
    lrs = _lrs(name, **kwargs)
    assert _at(lrs, 0, 5, 10, 35, 60, 110) == expected


def test_sd_scripts_newer_schedules_follow_their_curves():
    # inverse_sqrt: after warm-up, 1/sqrt((step + timescale - warmup) / timescale)
    lrs = _lrs("inverse_sqrt", lr_scheduler_timescale=20)
    decay = [0.01 / math.sqrt((step + 10) / 20) for step in (35, 60, 110)]
    assert _at(lrs, 0, 5, 10, 35, 60, 110) == [0.0, 0.005, 0.01, *decay]
    assert _lrs("inverse_sqrt")[60] == pytest.approx(0.01 / math.sqrt(6))  # timescale = warm-up
    # cosine_with_min_lr: one half-cosine from the rate down to min_lr_ratio of it
    lrs = _lrs("cosine_with_min_lr", lr_scheduler_min_lr_ratio=0.1)
    quarter = 0.01 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert _at(lrs, 0, 5, 10, 35, 60, 110) == [0.0, 0.005, 0.01, quarter, 0.0055, 0.001]
    # warmup_stable_decay: warm up 10, hold, decay over the last 20% (22 steps) to 0
    lrs = _lrs("warmup_stable_decay", lr_decay_steps=0.2)
    assert _at(lrs, 5, 10, 60, 88, 99, 110) == [0.005, 0.01, 0.01, 0.01, 0.005, 0.0]
    lrs = _lrs("warmup_stable_decay", lr_decay_steps=22, lr_scheduler_args=["decay_type='linear'"])
    assert _at(lrs, 93) == [0.01 * 17 / 22]
    # piecewise_constant: diffusers' step_rules, multiples of the rate
    lrs = _lrs("piecewise_constant", warmup=0, lr_scheduler_args=["step_rules='1:20,0.1:50,0.01'"])
    assert _at(lrs, 0, 19, 20, 49, 50, 110) == [0.01, 0.01, 0.001, 0.001, 1e-4, 1e-4]


def test_a_scheduler_class_with_its_args_replaces_lr_scheduler():
    lrs = _lrs("constant", warmup=0, lr_scheduler_type="StepLR",
               lr_scheduler_args=["step_size=30", "gamma=0.5"])  # fmt: skip
    assert _at(lrs, 0, 29, 30, 60, 110) == [0.01, 0.01, 0.005, 0.0025, 0.00125]
    lrs = _lrs("cosine", warmup=0, lr_scheduler_type="torch.optim.lr_scheduler.ExponentialLR",
               lr_scheduler_args=["gamma=0.9"])  # fmt: skip
    assert _at(lrs, 2) == [0.01 * 0.81]
    for kwargs, message in [
        ({"lr_scheduler_type": "StepLR", "lr_scheduler_args": ["step_size=3"]}, "lr_warmup_steps"),
        ({"lr_scheduler_type": "StepLr", "warmup": 0}, "did you mean StepLR"),
        ({"lr_scheduler_type": "ReduceLROnPlateau", "warmup": 0}, "step"),
        ({"lr_scheduler_type": "StepLR", "warmup": 0, "lr_scheduler_args": ["step=3"]},
         "no argument 'step'.*allowed: step_size"),
        ({"lr_scheduler_type": "StepLR", "warmup": 0}, "step_size"),  # a missing argument
        ({"lr_scheduler_type": "nowhere.Sched", "warmup": 0}, "cannot import nowhere"),
        ({"lr_scheduler_args": ["warmup_type='linear'"]}, "cosine has no argument"),
    ]:  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            _lrs(kwargs.pop("name", "cosine"), **kwargs)


def test_newer_schedules_refuse_what_they_cannot_do():
    with pytest.raises(ConfigError, match="step_rules="):
        _lrs("piecewise_constant", warmup=0)
    with pytest.raises(ConfigError, match="more than the 110 steps"):
        _lrs("warmup_stable_decay", warmup=60, lr_decay_steps=60)
    with pytest.raises(ConfigError, match="lr_decay_steps"):
        _lrs("warmup_stable_decay", lr_decay_steps=2.5)
    with pytest.raises(ConfigError, match="adafactor.*optimizer_type Adafactor"):
        _lrs("adafactor", warmup=0)
    optimizer = build_optimizer([_parameter()], "Adafactor", 1e-3, [])
    assert type(build_scheduler(optimizer, "adafactor", 1e-3, 10)).__name__ == "AdafactorSchedule"


def test_schedule_free_optimizers_keep_their_own_schedule(caplog):
    optimizer = build_optimizer([_parameter()], "SGDScheduleFree", 0.01, [])
    with caplog.at_level(logging.WARNING, logger="ti_core"):
        scheduler = build_scheduler(optimizer, "cosine", 0.01, 20, lr_warmup_steps=5)
    assert "schedules itself" in caplog.text and "warmup_steps=N" in caplog.text
    for _ in range(20):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == 0.01  # as sd-scripts' stand-in scheduler
    with pytest.raises(ConfigError, match="schedule-free"):
        build_scheduler(optimizer, "constant", "0.01:5, 0.001", 20)


def test_warmup_and_decay_shares_load_from_an_sd_scripts_config(tmp_path):
    from ti_core.config.toml_io import load_config

    path = tmp_path / "sd_scripts.toml"
    path.write_text(
        'lr_scheduler = "warmup_stable_decay"\nlr_warmup_steps = 0.05\nlr_decay_steps = 30\n'
        'lr_scheduler_min_lr_ratio = 0.1\nlr_scheduler_type = ""\n'
        'lr_scheduler_args = ["decay_type=\'linear\'"]\noptimizer_type = ""\nuse_8bit_adam = true\n'
    )
    options = load_config(path).optimizer
    assert (options.lr_warmup_steps, options.lr_decay_steps) == (0.05, 30.0)
    assert options.use_8bit_adam and options.lr_scheduler_args == ["decay_type='linear'"]


def test_warmup_can_be_a_share_of_the_steps():
    lrs = _lrs("constant_with_warmup", steps=200, warmup=0.1)  # 20 steps
    assert lrs[10] == pytest.approx(0.005) and lrs[19] < 0.01 and lrs[20] == 0.01
    with pytest.raises(ConfigError, match="lr_warmup_steps"):
        _lrs("linear", warmup=2.5)


def test_bad_schedule_settings_are_refused():
    with pytest.raises(ConfigError, match="did you mean cosine_with_restarts"):
        _lrs("cosine_restarts")
    with pytest.raises(ConfigError, match="constant_with_warmup"):
        _lrs("constant", warmup=5)
    with pytest.raises(ConfigError, match="polynomial"):
        _lrs("polynomial", lr=1e-8)


# ---- A1111 piecewise learning rates ---------------------------------------------------------


def test_a_plain_number_is_a_float():
    assert parse_learning_rate("1e-4") == 1e-4 and isinstance(parse_learning_rate("1e-4"), float)
    assert parse_learning_rate(0.005) == 0.005
    assert parse_learning_rate(" 2 ") == 2.0
    assert parse_learning_rate("0.01:-1") == 0.01  # -1: to the end, as in A1111


def test_piecewise_rates_change_after_each_boundary_step_as_in_a1111():
    # A1111 applies the schedule with the number of steps already done, before each step:
    # "0.005:100" covers steps 0..99 (the first 100), step 100 uses the next rate.
    rate = parse_learning_rate("0.005:100, 1e-3:1000, 1e-5")
    assert rate == PiecewiseRate(((0.005, 100), (1e-3, 1000), (1e-5, None)))
    assert rate.end_step is None
    optimizer = build_optimizer([_parameter()], "AdamW", rate, [])
    scheduler = build_scheduler(optimizer, "constant", rate, max_train_steps=1200)
    used = []
    for _ in range(1101):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert used[0] == used[99] == 0.005
    assert used[100] == used[999] == 1e-3  # exactly the rate, not lr * a factor
    assert used[1000] == used[1100] == 1e-5
    assert current_lr(optimizer) == 1e-5


def test_a_piecewise_schedule_that_ends_early_warns_and_keeps_its_last_rate(caplog):
    rate = parse_learning_rate("0.01:10, 0.001:20")
    assert rate.end_step == 20 and rate.rate_at(19) == 0.001 and rate.rate_at(500) == 0.001
    optimizer = build_optimizer([_parameter()], "AdamW", rate, [])
    with caplog.at_level(logging.WARNING, logger="ti_core"):
        build_scheduler(optimizer, "cosine", rate, max_train_steps=50, lr_warmup_steps=5)
    assert "replaces lr_scheduler=cosine" in caplog.text
    assert "ends at step 20" in caplog.text


@pytest.mark.parametrize(
    "text",
    [
        "fast",
        "0.005:abc",
        "0.005:100,",
        "0.005:100.5, 1e-5",
        "0.01:100, 0.001:50",
        "1e-3, 1e-4:100",
        "-0.1",
        "nan",
        "0.1:",
        "0.1:5:6",
    ],
)
def test_bad_piecewise_syntax_names_the_text(text):
    with pytest.raises(ConfigError) as error:
        parse_learning_rate(text)
    assert repr(text.strip()) in str(error.value) and "\n" not in str(error.value)
