"""Optimizers: sd-scripts' names, defaults, optimizer_args and the check before the model loads
(resume and schedule-free modes: test_optim_resume.py; schedules: test_schedules.py)."""

from __future__ import annotations

import logging
import math
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from ti_core.config.run_config import OptimizerConfig
from ti_core.errors import ConfigError
from ti_core.training.optim import (
    OPTIMIZER_TYPES,
    build_optimizer,
    build_scheduler,
    check_optimizer_settings,
    current_lr,
    parse_optimizer_args,
)

# A learning rate that suits each optimizer on the toy problem (D-Adaptation, Prodigy and
# Adafactor's relative step size scale themselves; Adafactor ignores it by default).
RATES = {
    **dict.fromkeys(
        ["AdamW", "AdamW8bit", "PagedAdamW", "PagedAdamW8bit", "PagedAdamW32bit"], 0.05
    ),
    **dict.fromkeys(["Lion", "Lion8bit", "PagedLion8bit"], 0.01),
    **dict.fromkeys(["SGDNesterov", "SGDNesterov8bit"], 0.05),
    **dict.fromkeys([n for n in OPTIMIZER_TYPES if n.startswith("DAdapt")], 1.0),
    "Prodigy": 1.0,
    "Adafactor": 0.005,
    "RAdamScheduleFree": 1.0,
    "AdamWScheduleFree": 0.05,
    "SGDScheduleFree": 0.05,
}
ARGS = {"DAdaptAdaGrad": ["d0=1e-2"]}  # its default first step is too small for 50 steps


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
    optimizer = build_optimizer([param], name.upper(), RATES[name], ARGS.get(name, []))
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
        "pagedadamw32bit": "bitsandbytes.optim",
        "SGDNesterov8bit": "bitsandbytes.optim",
        "dadaptation": "dadaptation.experimental",  # sd-scripts' alias of DAdaptAdamPreprint
        "DADAPTADAM": "dadaptation",
        "radamschedulefree": "schedulefree",
    }
    for name, module in modules.items():
        optimizer = build_optimizer([_embedding()], name, 1.0, [])
        assert type(optimizer).__module__.startswith(module), name
    assert type(build_optimizer([_embedding()], "dadaptation", 1.0, [])).__name__ == (
        "DAdaptAdamPreprint"
    )


def test_sd_scripts_older_switches_choose_adamw8bit_or_lion():
    def chosen(optimizer_type="AdamW", **switches):
        return type(build_optimizer([_embedding()], optimizer_type, 0.01, [], **switches)).__name__

    assert chosen(use_8bit_adam=True) == "AdamW8bit" == chosen("", use_8bit_adam=True)
    assert chosen(use_lion_optimizer=True) == "Lion" == chosen("lion", use_lion_optimizer=True)
    assert chosen("") == "AdamW"  # sd-scripts' default when optimizer_type is empty
    with pytest.raises(ConfigError, match="both on"):
        chosen(use_8bit_adam=True, use_lion_optimizer=True)
    with pytest.raises(ConfigError, match="use_8bit_adam .* and optimizer_type Prodigy"):
        chosen("Prodigy", use_8bit_adam=True)


def test_any_torch_optim_class_or_module_class_is_built_as_sd_scripts_does():
    assert type(build_optimizer([_embedding()], "RAdam", 0.01, [])) is torch.optim.RAdam
    assert type(build_optimizer([_embedding()], "radam", 0.01, [])) is torch.optim.RAdam
    optimizer = build_optimizer([_embedding()], "torch.optim.Adam", 0.01, ["amsgrad=True"])
    assert type(optimizer) is torch.optim.Adam and optimizer.defaults["amsgrad"] is True
    optimizer = build_optimizer([_embedding()], "bitsandbytes.optim.AdEMAMix8bit", 0.01, [])
    assert type(optimizer).__name__ == "AdEMAMix8bit"
    with pytest.raises(ConfigError, match=r"torch.optim has no class 'Adamm' \(did you mean Adam"):
        build_optimizer([_embedding()], "torch.optim.Adamm", 0.01, [])
    with pytest.raises(ConfigError, match="cannot import no_such_package"):
        build_optimizer([_embedding()], "no_such_package.Opt", 0.01, [])
    with pytest.raises(ConfigError, match="not an optimizer"):
        build_optimizer([_embedding()], "torch.nn.Linear", 0.01, [])
    with pytest.raises(ConfigError, match="RAdam has no argument 'betaz'"):
        build_optimizer([_embedding()], "RAdam", 0.01, ["betaz=0.9,0.99"])


@pytest.mark.parametrize("name", ["AdamW8bit", "PagedAdamW8bit", "Lion8bit", "SGDNesterov8bit"])
def test_8bit_optimizers_keep_8bit_state_and_train_on_cpu(name):
    # bitsandbytes keeps tensors under 4096 values in 32 bits; 8 vectors of 768 are above that.
    param = _embedding((8, 768))
    before = param.detach().clone()
    rate = 0.05 if name == "Lion8bit" else RATES[name]  # Lion's 0.01 is slow for 6144 values
    optimizer = build_optimizer([param], name, rate, [])
    scheduler = build_scheduler(optimizer, "constant", rate, max_train_steps=30)
    losses = _train(param, optimizer, scheduler, range(30))
    assert optimizer.state[param]["state1"].dtype == torch.uint8
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
    sgd8 = build_optimizer([_embedding()], "SGDNesterov8bit", 0.1, [])
    assert sgd8.defaults["betas"][0] == 0.9  # bitsandbytes keeps momentum as beta1


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
    optimizer = build_optimizer([param], "DAdaptAdam", 0.5, [])
    _train(param, optimizer, build_scheduler(optimizer, "constant", 0.5, 20), range(5))
    assert current_lr(optimizer) == pytest.approx(optimizer.param_groups[0]["d"] * 0.5) != 0.5


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
    ("name", "module"),
    [
        ("AdamW8bit", "bitsandbytes"),
        ("Prodigy", "prodigyopt"),
        ("DAdaptAdanIP", "dadaptation"),
        ("SGDScheduleFree", "schedulefree"),
    ],
)
def test_a_missing_library_stops_the_run_before_the_model_with_how_to_install_it(
    monkeypatch, name, module
):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    monkeypatch.delitem(sys.modules, f"{module}.optim", raising=False)
    monkeypatch.delitem(sys.modules, f"{module}.experimental", raising=False)
    pin = next(line for line in (ROOT / "requirements.txt").read_text().split() if module in line)
    with pytest.raises(ConfigError, match=f"pip install {pin}"):  # the pin of requirements.txt
        check_optimizer_settings(OptimizerConfig(optimizer_type=name, learning_rate=1.0))


def test_the_early_check_refuses_what_the_run_would_and_stays_quiet(caplog):
    with caplog.at_level(logging.INFO, logger="ti_core"):
        check_optimizer_settings(OptimizerConfig(optimizer_type="Prodigy", learning_rate=1e-3))
        check_optimizer_settings(OptimizerConfig(lr_scheduler="cosine", lr_warmup_steps=0.1))
    assert caplog.text == ""
    bad = [
        ({"optimizer_type": "AdamW32"}, "did you mean"),
        ({"optimizer_args": ["betaz=0.9"]}, "betaz"),
        ({"lr_scheduler": "cosine_with_min_lr", "lr_scheduler_args": ["min_lr=1"]}, "min_lr"),
        (
            {"lr_scheduler": "warmup_stable_decay", "lr_warmup_steps": 6, "lr_decay_steps": 6},
            "10 steps",
        ),
    ]
    for values, message in bad:
        with pytest.raises(ConfigError, match=message):
            check_optimizer_settings(OptimizerConfig(**values), max_train_steps=10)
