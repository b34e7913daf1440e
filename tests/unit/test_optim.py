"""Optimizers: sd-scripts' names, defaults and optimizer_args, and state dicts that let --resume
continue a run bit for bit (schedules and piecewise rates: test_schedules.py)."""

from __future__ import annotations

import io
import logging
import math
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from ti_core.errors import ConfigError
from ti_core.training.optim import (
    OPTIMIZER_TYPES,
    build_optimizer,
    build_scheduler,
    current_lr,
    parse_optimizer_args,
)

# A learning rate that suits each optimizer on the toy problem (Prodigy and Adafactor's
# relative step size scale themselves; Adafactor ignores it by default).
RATES = {
    "AdamW": 0.05,
    "AdamW8bit": 0.05,
    "Lion": 0.01,
    "SGDNesterov": 0.05,
    "Adafactor": 0.005,
    "Prodigy": 1.0,
}


def _embedding(shape=(4, 32), seed=0) -> torch.nn.Parameter:
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.Parameter(torch.randn(shape, generator=generator))


def _loss(param: torch.Tensor, step: int) -> torch.Tensor:
    """A quadratic whose target moves a little each step, so every step's gradient differs."""
    generator = torch.Generator().manual_seed(1000 + step)
    target = 0.1 * torch.randn(param.shape, generator=generator)
    return ((param - target) ** 2).sum()


def _train(param, optimizer, scheduler, steps) -> list[float]:
    losses = []
    for step in steps:
        optimizer.zero_grad()
        loss = _loss(param, step)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    return losses


def test_the_parsers_load_without_torch_so_the_gui_can_use_them():
    code = (
        "import sys; from ti_core.training.optim import parse_learning_rate, parse_optimizer_args; "
        "parse_learning_rate('0.005:100, 1e-5'); parse_optimizer_args(['betas=0.9,0.99']); "
        "print(' '.join(sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded = set(result.stdout.split())
    assert "ti_core.training.optim" in loaded and "torch" not in loaded


# ---- optimizers -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", OPTIMIZER_TYPES)
def test_each_optimizer_builds_from_its_name_and_reduces_the_loss(name):
    param = _embedding()
    optimizer = build_optimizer([param], name.upper(), RATES[name], [])
    scheduler = build_scheduler(optimizer, "constant", RATES[name], max_train_steps=50)
    losses = _train(param, optimizer, scheduler, range(50))
    assert losses[-1] < 0.6 * losses[0], losses[::10]


def test_names_are_matched_case_insensitively_to_the_right_library():
    modules = {
        "adamw": "torch.optim",
        "ADAMW8BIT": "bitsandbytes.optim",
        "lion": "bitsandbytes.optim",
        "sgdnesterov": "torch.optim",
        "adafactor": "transformers.optimization",
        "prodigy": "prodigyopt",
    }
    for name, module in modules.items():
        optimizer = build_optimizer([_embedding()], name, 1.0, [])
        assert type(optimizer).__module__.startswith(module), name


def test_adamw8bit_keeps_8bit_state_and_trains_on_cpu():
    # bitsandbytes keeps tensors under 4096 values in 32 bits; 8 vectors of 768 are above that.
    param = _embedding((8, 768))
    before = param.detach().clone()
    optimizer = build_optimizer([param], "AdamW8bit", 0.05, [])
    scheduler = build_scheduler(optimizer, "constant", 0.05, max_train_steps=30)
    losses = _train(param, optimizer, scheduler, range(30))
    assert optimizer.state[param]["state1"].dtype == torch.uint8
    assert optimizer.state[param]["state2"].dtype == torch.uint8
    assert not torch.equal(param.detach(), before)
    assert losses[-1] < 0.5 * losses[0]


def test_lion_matches_the_lion_pytorch_update_that_sd_scripts_uses():
    param = _embedding()
    reference = param.detach().clone()
    momentum = torch.zeros_like(reference)
    lr, weight_decay, beta1, beta2 = 0.01, 0.1, 0.9, 0.99
    optimizer = build_optimizer([param], "Lion", lr, ["weight_decay=0.1", "betas=0.9,0.99"])
    for step in range(10):
        optimizer.zero_grad()
        _loss(param, step).backward()
        optimizer.step()
        reference.requires_grad_(True)
        grad = torch.autograd.grad(_loss(reference, step), reference)[0]
        reference = reference.detach()
        reference.mul_(1 - lr * weight_decay)
        reference.add_((momentum * beta1 + grad * (1 - beta1)).sign(), alpha=-lr)
        momentum.mul_(beta2).add_(grad, alpha=1 - beta2)
    assert torch.equal(param.detach(), reference)


def test_sd_scripts_defaults():
    sgd = build_optimizer([_embedding()], "SGDNesterov", 0.1, [])
    assert sgd.defaults["momentum"] == 0.9 and sgd.defaults["nesterov"] is True
    sgd = build_optimizer([_embedding()], "SGDNesterov", 0.1, ["momentum=0.5"])
    assert sgd.defaults["momentum"] == 0.5
    adafactor = build_optimizer([_embedding()], "Adafactor", 1e-3, [])
    assert adafactor.defaults["relative_step"] is True and adafactor.defaults["lr"] is None
    adafactor = build_optimizer([_embedding()], "Adafactor", 1e-3, ["relative_step=False"])
    assert adafactor.defaults["relative_step"] is False and adafactor.defaults["lr"] == 1e-3
    # warmup_init only works with relative steps; sd-scripts turns them back on
    adafactor = build_optimizer(
        [_embedding()], "Adafactor", 1e-3, ["relative_step=False", "warmup_init=True"]
    )
    assert adafactor.defaults["relative_step"] is True
    adamw = build_optimizer([_embedding()], "AdamW", 1e-3, [])
    assert adamw.defaults["weight_decay"] == 0.01  # torch's default, which sd-scripts keeps


def test_prodigy_warns_about_a_low_learning_rate_and_logs_d_times_lr(caplog):
    param = _embedding()
    with caplog.at_level(logging.WARNING, logger="ti_core"):
        build_optimizer([_embedding()], "Prodigy", 5e-3, [])
    assert "learning_rate=1.0" in caplog.text
    optimizer = build_optimizer([param], "Prodigy", 0.5, ["d_coef=2"])
    scheduler = build_scheduler(optimizer, "constant", 0.5, max_train_steps=20)
    _train(param, optimizer, scheduler, range(20))
    group = optimizer.param_groups[0]
    assert group["d"] > group["d0"]  # it adapted
    assert current_lr(optimizer) == pytest.approx(group["d"] * 0.5)


def test_adafactor_relative_step_uses_its_own_schedule_and_logs_its_step_size():
    param = _embedding()
    optimizer = build_optimizer([param], "Adafactor", 1e-3, [])
    scheduler = build_scheduler(optimizer, "constant", 1e-3, max_train_steps=10)
    assert type(scheduler).__name__ == "AdafactorSchedule"
    assert current_lr(optimizer) == 1e-3  # reported as the initial rate until it steps
    _train(param, optimizer, scheduler, range(3))
    state = optimizer.state[param]
    expected = min(1e-2, 1 / math.sqrt(state["step"])) * max(1e-3, float(state["RMS"]))
    assert current_lr(optimizer) == pytest.approx(expected)
    with pytest.raises(ConfigError, match="lr_warmup_steps"):
        build_scheduler(optimizer, "constant_with_warmup", 1e-3, 10, lr_warmup_steps=2)
    with pytest.raises(ConfigError, match="relative_step=False"):
        build_optimizer([_embedding()], "Adafactor", "0.01:5, 0.001", [])


# ---- optimizer_args -------------------------------------------------------------------------


def test_optimizer_args_are_python_literals_as_in_sd_scripts():
    parsed = parse_optimizer_args(
        [
            "weight_decay=0.01",
            "betas=0.9,0.99",
            "relative_step=False",
            "decouple=true",
            "d_coef = 2",
            "eps=1e-8",
            "beta3=None",
            "name='x=y'",
        ]
    )
    assert parsed == {
        "weight_decay": 0.01,
        "betas": (0.9, 0.99),
        "relative_step": False,
        "decouple": True,
        "d_coef": 2,
        "eps": 1e-8,
        "beta3": None,
        "name": "x=y",
    }
    assert type(parsed["d_coef"]) is int
    assert parse_optimizer_args("weight_decay=0.1 betas=.9,.99") == {
        "weight_decay": 0.1,
        "betas": (0.9, 0.99),
    }
    assert parse_optimizer_args(None) == {} == parse_optimizer_args([])


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("weight_decay", "key=value"),
        ("=0.1", "key=value"),
        ("betas=fast", "'fast' is not a value"),
        ("eps=1e-8)", "not a value"),
    ],
)
def test_bad_optimizer_args_are_refused_naming_the_text(arg, message):
    with pytest.raises(ConfigError, match=message) as error:
        parse_optimizer_args([arg])
    assert repr(arg) in str(error.value) and "\n" not in str(error.value)


def test_optimizer_args_the_optimizer_does_not_take_are_refused():
    with pytest.raises(ConfigError, match="given twice"):
        parse_optimizer_args(["eps=1e-8", "eps=1e-6"])
    with pytest.raises(ConfigError, match=r"'betaz' \(did you mean betas\?\); allowed: .*betas"):
        build_optimizer([_embedding()], "AdamW", 1e-3, ["betaz=0.9,0.99"])
    with pytest.raises(ConfigError, match="learning_rate"):
        build_optimizer([_embedding()], "Prodigy", 1.0, ["lr=0.5"])
    with pytest.raises(ConfigError, match="nesterov"):
        build_optimizer([_embedding()], "SGDNesterov", 0.1, ["nesterov=False"])
    with pytest.raises(ConfigError, match="optimizer_args for AdamW: .*beta"):
        build_optimizer([_embedding()], "AdamW", 1e-3, ["betas=2.0,0.9"])


def test_applied_optimizer_args_reach_the_optimizer():
    optimizer = build_optimizer([_embedding()], "adamw", 1e-3, ["weight_decay=0", "betas=0.8,0.9"])
    assert optimizer.defaults["weight_decay"] == 0 and optimizer.defaults["betas"] == (0.8, 0.9)


def test_unknown_optimizer_names_it_and_what_is_allowed():
    with pytest.raises(ConfigError) as error:
        build_optimizer([_embedding()], "AdamW32", 1e-3, [])
    message = str(error.value)
    assert "'AdamW32'" in message and "did you mean" in message and "\n" not in message
    assert all(name in message for name in OPTIMIZER_TYPES)


@pytest.mark.parametrize(
    ("name", "module"), [("AdamW8bit", "bitsandbytes"), ("Prodigy", "prodigyopt")]
)
def test_a_missing_library_says_how_to_install_it(monkeypatch, name, module):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(ConfigError, match=f"pip install {module}=="):
        build_optimizer([_embedding()], name, 1e-3, [])


# ---- resume ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "shape", "scheduler_name"),
    [
        ("AdamW", (4, 32), "cosine"),
        ("AdamW8bit", (8, 768), "cosine"),  # large enough for 8-bit state
        ("Prodigy", (4, 32), "cosine"),
        ("Lion", (4, 32), "linear"),
        ("SGDNesterov", (4, 32), "polynomial"),
        ("Adafactor", (4, 32), "constant"),
    ],
)
def test_saved_state_continues_bit_identically(name, shape, scheduler_name):
    total, saved_at = 12, 5
    warmup = 0 if scheduler_name == "constant" else 3

    def build(param):
        optimizer = build_optimizer([param], name, RATES[name], [])
        scheduler = build_scheduler(
            optimizer, scheduler_name, RATES[name], total, lr_warmup_steps=warmup
        )
        return optimizer, scheduler

    straight = _embedding(shape)
    _train(straight, *build(straight), range(total))

    first = _embedding(shape)
    optimizer, scheduler = build(first)
    _train(first, optimizer, scheduler, range(saved_at))
    buffer = io.BytesIO()
    torch.save(
        {
            "param": first.detach(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
        },
        buffer,
    )
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    resumed = _embedding(shape, seed=1)  # a different start, overwritten by the saved rows
    with torch.no_grad():
        resumed.copy_(saved["param"])
    optimizer, scheduler = build(resumed)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    _train(resumed, optimizer, scheduler, range(saved_at, total))

    assert not torch.equal(straight.detach(), _embedding(shape).detach())  # it trained
    assert torch.equal(resumed.detach(), straight.detach())
