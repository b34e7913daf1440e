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
