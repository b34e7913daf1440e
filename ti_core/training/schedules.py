"""Learning-rate schedules, named and shaped as sd-scripts' get_scheduler_fix builds them
(transformers' schedule functions, diffusers' piecewise_constant, Adafactor's own step size,
any scheduler class), plus AUTOMATIC1111's piecewise learning-rate syntax.

torch and transformers load only when a schedule is built.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ti_core.errors import ConfigError
from ti_core.training.optim_args import (
    LR_SCHEDULERS,
    PiecewiseRate,
    did_you_mean,
    parse_learning_rate,
    parse_scheduler_args,
)

if TYPE_CHECKING:
    import torch
    from torch.optim.lr_scheduler import LRScheduler

log = logging.getLogger(__name__)


def resolve_steps(value: int | float, max_train_steps: int, option: str = "lr_warmup_steps") -> int:
    """A step count; a float below 1 is a share of max_train_steps, as in sd-scripts."""
    if isinstance(value, bool) or value < 0:
        raise ConfigError(f"{option} {value!r}: expected a step count >= 0")
    if isinstance(value, float):
        if value < 1:
            return int(value * max_train_steps)
        if not value.is_integer():
            raise ConfigError(
                f"{option} {value}: expected a whole step count or a share of the steps below 1"
            )
    return int(value)


def resolve_warmup_steps(lr_warmup_steps: int | float, max_train_steps: int) -> int:
    """Warm-up in steps; a float below 1 is a share of max_train_steps, as in sd-scripts."""
    return resolve_steps(lr_warmup_steps, max_train_steps, "lr_warmup_steps")


def is_schedule_free(optimizer: Any) -> bool:
    """A schedule-free optimizer (schedulefree's, or a module.Class like them): it keeps two
    sets of weights and must be told whether it trains or is read (train() / eval())."""
    groups = getattr(optimizer, "param_groups", None) or [{}]
    return "train_mode" in groups[0] and callable(getattr(optimizer, "eval", None))


def _is_relative_step_adafactor(optimizer: torch.optim.Optimizer) -> bool:
    module = sys.modules.get("transformers.optimization")
    return (
        module is not None
        and isinstance(optimizer, module.Adafactor)
        and bool(optimizer.defaults.get("relative_step"))
    )


def _piecewise_schedule(optimizer: torch.optim.Optimizer, rate: PiecewiseRate) -> LRScheduler:
    from torch.optim.lr_scheduler import LambdaLR

    # LambdaLR sets lr = base lr * factor; with a base of 1.0 the factor is the rate, exactly.
    for group in optimizer.param_groups:
        group["lr"] = 1.0
        group["initial_lr"] = 1.0
    return LambdaLR(optimizer, functools.partial(PiecewiseRate.rate_at, rate))


def _call(maker: Any, what: str, optimizer: Any, kwargs: dict, given: dict) -> LRScheduler:
    """maker(optimizer, **kwargs, **given): `given` are lr_scheduler_args, checked by name."""
    parameters = inspect.signature(maker).parameters
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    allowed = [name for name in parameters if name not in ("optimizer", "self", *kwargs)]
    for key in given:
        if key in kwargs:
            raise ConfigError(f"lr_scheduler_args: {key} is set by the config for {what}")
        if not accepts_any and key not in allowed:
            raise ConfigError(
                f"lr_scheduler_args: {what} has no argument {key!r}{did_you_mean(key, allowed)}; "
                f"allowed: {', '.join(allowed) or 'none'}"
            )
    try:
        return maker(optimizer, **kwargs, **given)
    except (ValueError, TypeError, KeyError) as error:
        raise ConfigError(f"{what}: {error}") from error


def _scheduler_class(lr_scheduler_type: str) -> Any:
    """lr_scheduler_type: a torch.optim.lr_scheduler class name or module.Class (sd-scripts)."""
    import torch

    module_name, _, class_name = lr_scheduler_type.rpartition(".")
    try:
        module = importlib.import_module(module_name) if module_name else torch.optim.lr_scheduler
    except ImportError as error:
        raise ConfigError(
            f"lr_scheduler_type {lr_scheduler_type}: cannot import {module_name} ({error})"
        ) from error
    scheduler_class = getattr(module, class_name, None)
    if not isinstance(scheduler_class, type):
        names = [n for n in dir(module) if isinstance(getattr(module, n), type)]
        raise ConfigError(
            f"lr_scheduler_type {lr_scheduler_type}: {module.__name__} has no class "
            f"{class_name!r}{did_you_mean(class_name, names)}"
        )
    step = inspect.signature(scheduler_class.step).parameters.values()
    if any(
        p.default is p.empty and p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD
        for p in step
    ):
        raise ConfigError(
            f"lr_scheduler_type {lr_scheduler_type}: its step() needs arguments (a loss, like "
            "ReduceLROnPlateau); the run calls step() after each optimizer step, without any"
        )
    return scheduler_class


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    lr_scheduler: str,
    learning_rate: float | str | PiecewiseRate,
    max_train_steps: int,
    lr_warmup_steps: int | float = 0,
    lr_scheduler_num_cycles: int = 1,
    lr_scheduler_power: float = 1.0,
    *,
    lr_decay_steps: int | float = 0,
    lr_scheduler_min_lr_ratio: float = 0.0,
    lr_scheduler_timescale: int = 0,
    lr_scheduler_type: str = "",
    lr_scheduler_args: Sequence[str] | str | None = (),
) -> LRScheduler:
    """The schedule sd-scripts' get_scheduler_fix would build. Call scheduler.step() after each
    optimizer.step(). A piecewise learning_rate replaces lr_scheduler; Adafactor with
    relative_step uses its AdafactorSchedule; a schedule-free optimizer gets a constant one
    (it schedules itself). To resume, build the optimizer and scheduler from the same config,
    then load both state dicts."""
    from transformers import optimization as schedules

    name = str(lr_scheduler).strip().lower()
    if name not in LR_SCHEDULERS:
        raise ConfigError(
            f"lr_scheduler {lr_scheduler!r} is not supported{did_you_mean(name, LR_SCHEDULERS)}; "
            f"choose one of {', '.join(LR_SCHEDULERS)}"
        )
    if max_train_steps < 1:
        raise ConfigError(f"max_train_steps {max_train_steps}: expected at least 1")
    warmup = resolve_steps(lr_warmup_steps, max_train_steps, "lr_warmup_steps")
    decay = resolve_steps(lr_decay_steps, max_train_steps, "lr_decay_steps")
    rate = parse_learning_rate(learning_rate)
    given = parse_scheduler_args(lr_scheduler_args)
    custom = str(lr_scheduler_type or "").strip()

    if is_schedule_free(optimizer):
        if isinstance(rate, PiecewiseRate):
            raise ConfigError(
                f"learning_rate {str(learning_rate)!r}: a schedule-free optimizer keeps its own "
                "schedule; give one rate (and warmup_steps=N in optimizer_args for a warm-up)"
            )
        if name != "constant" or warmup or custom:
            log.warning(
                "a schedule-free optimizer schedules itself: lr_scheduler, lr_warmup_steps and "
                "lr_scheduler_type are ignored (as in sd-scripts); for a warm-up add "
                "warmup_steps=N to optimizer_args"
            )
        return schedules.get_constant_schedule(optimizer)

    if custom:
        if isinstance(rate, PiecewiseRate) or _is_relative_step_adafactor(optimizer) or warmup:
            raise ConfigError(
                f"lr_scheduler_type {custom} sets the schedule alone: it takes no lr_warmup_steps "
                "(set 0), no piecewise learning_rate and no Adafactor with relative_step=True"
            )
        log.info(f"lr_scheduler_type {custom} {given}")
        return _call(_scheduler_class(custom), f"lr_scheduler_type {custom}", optimizer, {}, given)

    if _is_relative_step_adafactor(optimizer):
        if isinstance(rate, PiecewiseRate):
            raise ConfigError(
                f"learning_rate {str(learning_rate)!r}: a piecewise schedule cannot drive "
                "Adafactor with relative_step=True; add relative_step=False to optimizer_args"
            )
        if warmup:
            raise ConfigError(
                f"lr_warmup_steps {lr_warmup_steps}: Adafactor with relative_step=True "
                "schedules itself; set lr_warmup_steps=0 or add relative_step=False"
            )
        if name not in ("constant", "adafactor"):
            log.warning(f"lr_scheduler {name} is ignored: Adafactor with relative_step=True")
        return schedules.AdafactorSchedule(optimizer, initial_lr=rate)
    if name == "adafactor":
        raise ConfigError(
            "lr_scheduler adafactor is Adafactor's own step size: it needs optimizer_type "
            "Adafactor without relative_step=False"
        )

    if isinstance(rate, PiecewiseRate):
        if name != "constant" or warmup:
            log.warning(
                f"learning_rate {str(rate)!r} is a piecewise schedule; it replaces "
                f"lr_scheduler={name} and lr_warmup_steps={lr_warmup_steps}"
            )
        if rate.end_step is not None and rate.end_step < max_train_steps:
            log.warning(
                f"learning_rate {str(rate)!r} ends at step {rate.end_step} (AUTOMATIC1111 stops "
                f"training there); its last rate {rate.pieces[-1][0]} holds until step "
                f"{max_train_steps}"
            )
        return _piecewise_schedule(optimizer, rate)

    return _named_schedule(
        optimizer, name, max_train_steps, warmup, decay, given,
        lr_scheduler_num_cycles, lr_scheduler_power, lr_scheduler_min_lr_ratio,
        lr_scheduler_timescale, lr_warmup_steps,
    )  # fmt: skip


def _named_schedule(
    optimizer: torch.optim.Optimizer,
    name: str,
    total: int,
    warmup: int,
    decay: int,
    given: dict,
    num_cycles: int,
    power: float,
    min_lr_ratio: float,
    timescale: int,
    warmup_as_given: int | float,
) -> LRScheduler:
    """One of transformers' schedules (or diffusers' piecewise_constant) by sd-scripts' name."""
    from transformers import optimization as schedules

    what = f"lr_scheduler {name}"
    if name in ("constant", "piecewise_constant") and warmup:
        if name == "constant":  # sd-scripts refuses this too: the warm-up would do nothing
            raise ConfigError(
                f"lr_warmup_steps {warmup_as_given}: lr_scheduler constant has no warm-up; "
                "use constant_with_warmup or set lr_warmup_steps=0"
            )
        log.warning(f"lr_warmup_steps {warmup_as_given} is ignored by piecewise_constant")
    elif warmup >= total:
        log.warning(f"lr_warmup_steps {warmup} >= max_train_steps {total}")
    if name == "constant":
        return _call(schedules.get_constant_schedule, what, optimizer, {}, given)
    if name == "piecewise_constant":
        from diffusers.optimization import get_piecewise_constant_schedule

        if not isinstance(given.get("step_rules"), str):
            raise ConfigError(
                "lr_scheduler piecewise_constant needs its rules in lr_scheduler_args, as "
                "sd-scripts: step_rules='1:100,0.1:200,0.01' (x1 before step 100, x0.1 before "
                "step 200, then x0.01)"
            )
        return _call(get_piecewise_constant_schedule, what, optimizer, {}, given)
    with_warmup = {"num_warmup_steps": warmup}
    if name == "constant_with_warmup":
        maker = schedules.get_constant_schedule_with_warmup
        return _call(maker, what, optimizer, with_warmup, given)
    if name == "inverse_sqrt":
        with_warmup["timescale"] = timescale or None  # None: the warm-up steps, or 10000
        return _call(schedules.get_inverse_sqrt_schedule, what, optimizer, with_warmup, given)
    steps = {**with_warmup, "num_training_steps": total}
    if name == "linear":
        return _call(schedules.get_linear_schedule_with_warmup, what, optimizer, steps, given)
    if name == "cosine":
        return _call(schedules.get_cosine_schedule_with_warmup, what, optimizer, steps, given)
    if name == "cosine_with_restarts":
        maker = schedules.get_cosine_with_hard_restarts_schedule_with_warmup
        return _call(maker, what, optimizer, {**steps, "num_cycles": num_cycles}, given)
    if name == "polynomial":
        maker = schedules.get_polynomial_decay_schedule_with_warmup
        return _call(maker, what, optimizer, {**steps, "power": power}, given)
    # sd-scripts counts these cycles in whole cosine waves and transformers in half waves
    if name == "cosine_with_min_lr":
        maker = schedules.get_cosine_with_min_lr_schedule_with_warmup
        shape = {"num_cycles": num_cycles / 2, "min_lr_rate": min_lr_ratio}
        return _call(maker, what, optimizer, {**steps, **shape}, given)
    # warmup_stable_decay: warm up, hold, then decay over lr_decay_steps to the last step
    stable = total - warmup - decay
    if stable < 0:
        raise ConfigError(
            f"lr_scheduler warmup_stable_decay: lr_warmup_steps ({warmup}) and lr_decay_steps "
            f"({decay}) add up to more than the {total} steps"
        )
    if not decay:
        log.warning("lr_scheduler warmup_stable_decay with lr_decay_steps 0 never decays")
    shape = {
        "num_warmup_steps": warmup,
        "num_stable_steps": stable,
        "num_decay_steps": decay,
        "num_cycles": num_cycles / 2,
        "min_lr_ratio": min_lr_ratio,
    }
    return _call(schedules.get_wsd_schedule, what, optimizer, shape, given)
