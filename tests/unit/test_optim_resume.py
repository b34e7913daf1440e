"""Optimizer state that lets --resume continue a run bit for bit, for every kind of optimizer,
and the schedule-free optimizers' train/eval weights the loop switches between."""

from __future__ import annotations

import io

import pytest
import torch
from test_optim import RATES, _embedding, _train

from ti_core.training.optim import (
    build_optimizer,
    build_scheduler,
    optimizer_eval_mode,
    optimizer_train_mode,
)

# ---- schedule-free ----------------------------------------------------------------------------


def test_schedule_free_optimizers_switch_between_train_and_eval_weights():
    param = _embedding()
    optimizer = build_optimizer([param], "AdamWScheduleFree", 0.05, [])
    assert optimizer.param_groups[0]["train_mode"]  # built ready to step, as in sd-scripts
    _train(param, optimizer, build_scheduler(optimizer, "constant", 0.05, 10), range(5))
    training_point = param.detach().clone()
    optimizer_eval_mode(optimizer)
    averaged = param.detach().clone()
    assert not torch.equal(averaged, training_point)  # what samples and saved files must see
    optimizer_eval_mode(optimizer)  # twice is once
    assert torch.equal(param.detach(), averaged)
    optimizer_train_mode(optimizer)
    assert torch.allclose(param.detach(), training_point, atol=1e-6)

    adamw = build_optimizer([param], "AdamW", 0.05, [])
    before = param.detach().clone()
    optimizer_eval_mode(adamw)
    optimizer_train_mode(adamw)
    assert torch.equal(param.detach(), before)  # no-ops for every other optimizer


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
        ("PagedAdamW32bit", (4, 32), "inverse_sqrt"),
        ("Lion8bit", (8, 768), "cosine_with_min_lr"),
        ("SGDNesterov8bit", (8, 768), "warmup_stable_decay"),
        ("DAdaptAdam", (4, 32), "cosine"),
        ("DAdaptation", (4, 32), "linear"),
        ("DAdaptSGD", (4, 32), "constant"),
        ("AdamWScheduleFree", (4, 32), "constant"),
        ("RAdamScheduleFree", (4, 32), "constant"),
        ("torch.optim.RAdam", (4, 32), "cosine_with_restarts"),
    ],
)
def test_saved_state_continues_bit_identically(name, shape, scheduler_name):
    total, saved_at = 12, 5
    warmup = 0 if scheduler_name == "constant" else 3
    extra = {"lr_decay_steps": 4, "lr_scheduler_min_lr_ratio": 0.1}
    rate = RATES.get(name, 0.05)

    def build(param):
        optimizer = build_optimizer([param], name, rate, [])
        scheduler = build_scheduler(
            optimizer, scheduler_name, rate, total, lr_warmup_steps=warmup, **extra
        )
        return optimizer, scheduler

    def save_point(optimizer):  # the loop reads (saves) the weights in eval mode
        optimizer_eval_mode(optimizer)

    straight = _embedding(shape)
    optimizer, scheduler = build(straight)
    _train(straight, optimizer, scheduler, range(saved_at))
    save_point(optimizer)
    optimizer_train_mode(optimizer)
    _train(straight, optimizer, scheduler, range(saved_at, total))
    save_point(optimizer)

    first = _embedding(shape)
    optimizer, scheduler = build(first)
    _train(first, optimizer, scheduler, range(saved_at))
    save_point(optimizer)
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
    optimizer_train_mode(optimizer)  # after loading: the saved state was in eval mode
    _train(resumed, optimizer, scheduler, range(saved_at, total))
    save_point(optimizer)

    assert not torch.equal(straight.detach(), _embedding(shape).detach())  # it trained
    assert torch.equal(resumed.detach(), straight.detach())
