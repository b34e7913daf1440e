"""Optimizers and learning-rate schedules for the trainable embedding rows, named and
behaving as in kohya-ss sd-scripts, plus AUTOMATIC1111's piecewise learning-rate syntax.

torch and the optimizer libraries load only when an optimizer or schedule is built; what the
user types (learning rate text, optimizer_args) is parsed in optim_args.py.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ti_core.config.run_config import FIELDS
from ti_core.errors import ConfigError
from ti_core.training.optim_args import (
    PiecewiseRate,
    did_you_mean,
    parse_learning_rate,
    parse_optimizer_args,
)

if TYPE_CHECKING:
    import torch
    from torch.optim.lr_scheduler import LRScheduler

log = logging.getLogger(__name__)

# The names the config accepts are the names built here: one list, in ti_core/config/run_config.py.
OPTIMIZER_TYPES: tuple[str, ...] = FIELDS["optimizer_type"].choices or ()
LR_SCHEDULERS: tuple[str, ...] = FIELDS["lr_scheduler"].choices or ()
# Where each optimizer comes from, for the "how to install it" message.
_INSTALL = {
    "AdamW8bit": "bitsandbytes==0.50.2",
    "Lion": "bitsandbytes==0.50.2",
    "Prodigy": "prodigyopt==1.1.2",
}


# ---- optimizers -----------------------------------------------------------------------------


def _optimizer_class(optimizer_type: str) -> Any:
    """The class for a canonical optimizer name, importing its library only now."""
    import torch

    if optimizer_type == "AdamW":
        return torch.optim.AdamW
    if optimizer_type == "SGDNesterov":
        return torch.optim.SGD
    if optimizer_type == "Adafactor":
        from transformers.optimization import Adafactor

        return Adafactor
    try:
        if optimizer_type == "Prodigy":
            import prodigyopt

            return prodigyopt.Prodigy
        import bitsandbytes as bnb

        # sd-scripts takes Lion from lion_pytorch; bitsandbytes' 32-bit Lion is the same
        # update (decoupled weight decay, sign of the interpolated momentum) and runs on CPU.
        return bnb.optim.AdamW8bit if optimizer_type == "AdamW8bit" else bnb.optim.Lion
    except Exception as error:  # ImportError, or a bitsandbytes build that cannot load here
        package = _INSTALL[optimizer_type]
        raise ConfigError(
            f"optimizer_type {optimizer_type} needs {package.split('==')[0]}, which cannot be "
            f"loaded ({type(error).__name__}: {error}); install it with: pip install {package}"
        ) from error


def _check_keywords(
    optimizer_type: str, optimizer_class: Any, kwargs: dict, reserved: dict
) -> None:
    """Refuse optimizer_args the optimizer would reject, naming what it accepts."""
    for key, owner in reserved.items():
        if key in kwargs:
            raise ConfigError(f"optimizer_args: {key} cannot be set for {optimizer_type}; {owner}")
    parameters = inspect.signature(optimizer_class.__init__).parameters.values()
    if any(parameter.kind is parameter.VAR_KEYWORD for parameter in parameters):
        return
    allowed = [p.name for p in parameters if p.name not in ("self", "params", *reserved)]
    for key in kwargs:
        if key not in allowed:
            raise ConfigError(
                f"optimizer_args: {optimizer_type} has no argument {key!r}"
                f"{did_you_mean(key, allowed)}; allowed: {', '.join(allowed)}"
            )


def build_optimizer(
    params: Iterable[torch.Tensor],
    optimizer_type: str,
    learning_rate: float | str | PiecewiseRate,
    optimizer_args: Sequence[str] | str | None = (),
) -> torch.optim.Optimizer:
    """The optimizer sd-scripts' get_optimizer would build for `optimizer_type` (any case),
    over `params`: the small (N, dim) embedding rows, one tensor per text encoder, in one group.
    A piecewise learning_rate starts the optimizer at its first rate (build_scheduler drives it)."""
    canonical = {name.lower(): name for name in OPTIMIZER_TYPES}
    name = canonical.get(str(optimizer_type).strip().lower())
    if name is None:
        raise ConfigError(
            f"optimizer_type {optimizer_type!r} is not supported"
            f"{did_you_mean(str(optimizer_type), OPTIMIZER_TYPES)}; "
            f"choose one of {', '.join(OPTIMIZER_TYPES)}"
        )
    params = list(params)
    if not params:
        raise ValueError("build_optimizer needs at least one trainable tensor")
    rate = parse_learning_rate(learning_rate)
    lr = rate.initial_rate if isinstance(rate, PiecewiseRate) else rate
    kwargs = parse_optimizer_args(optimizer_args)
    if name == "Lion" and kwargs.pop("use_triton", None) is not None:
        log.warning("optimizer_args: use_triton (a lion_pytorch option) is ignored")
    reserved = {"lr": "set it with learning_rate"}
    if name == "SGDNesterov":
        reserved["nesterov"] = "SGDNesterov always uses Nesterov momentum"
    optimizer_class = _optimizer_class(name)
    _check_keywords(name, optimizer_class, kwargs, reserved)

    if name == "SGDNesterov":
        kwargs.setdefault("momentum", 0.9)  # sd-scripts' default: Nesterov needs momentum
        kwargs["nesterov"] = True
    elif name == "Prodigy" and lr <= 0.1:
        log.warning(
            f"learning_rate {lr} is low for Prodigy, which adapts the step size itself; "
            "sd-scripts recommends learning_rate=1.0"
        )
    elif name == "Adafactor":
        kwargs.setdefault("relative_step", True)  # sd-scripts' default
        if kwargs.get("warmup_init") and not kwargs["relative_step"]:
            log.info("Adafactor: warmup_init=True needs relative_step=True; turning it on")
            kwargs["relative_step"] = True
        if kwargs["relative_step"]:
            if isinstance(rate, PiecewiseRate):
                raise ConfigError(
                    f"learning_rate {str(learning_rate)!r}: a piecewise schedule cannot drive "
                    "Adafactor with relative_step=True; add relative_step=False to optimizer_args"
                )
            if lr != 0:
                log.warning(
                    f"Adafactor with relative_step=True sets its own step size; learning_rate "
                    f"{lr} is only reported as the initial rate (add relative_step=False to use it)"
                )
            lr = None

    try:
        optimizer = optimizer_class(params, lr=lr, **kwargs)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"optimizer_args for {name}: {error}") from error
    log.info(
        f"optimizer: {name} ({optimizer_class.__module__}.{optimizer_class.__name__}) {kwargs}"
    )
    return optimizer


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The step size to log: d*lr for Prodigy (as sd-scripts logs it), Adafactor's own relative
    step size when it sets one, the (scheduled) lr otherwise. First parameter group."""
    group = optimizer.param_groups[0]
    lr = group["lr"]
    if "d" in group and "d0" in group:  # Prodigy / D-Adaptation: lr is a multiplier of d
        return float(group["d"] * lr)
    if group.get("relative_step"):
        state = optimizer.state.get(group["params"][0])
        if state:
            return float(optimizer._get_lr(group, state))
    return float(lr) if lr is not None else 0.0


# ---- schedules ------------------------------------------------------------------------------


def resolve_warmup_steps(lr_warmup_steps: int | float, max_train_steps: int) -> int:
    """Warm-up in steps; a float below 1 is a share of max_train_steps, as in sd-scripts."""
    if isinstance(lr_warmup_steps, bool) or lr_warmup_steps < 0:
        raise ConfigError(f"lr_warmup_steps {lr_warmup_steps!r}: expected a step count >= 0")
    if isinstance(lr_warmup_steps, float):
        if lr_warmup_steps < 1:
            return int(lr_warmup_steps * max_train_steps)
        if not lr_warmup_steps.is_integer():
            raise ConfigError(
                f"lr_warmup_steps {lr_warmup_steps}: expected a whole step count "
                "or a share of the steps below 1"
            )
    return int(lr_warmup_steps)


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


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    lr_scheduler: str,
    learning_rate: float | str | PiecewiseRate,
    max_train_steps: int,
    lr_warmup_steps: int | float = 0,
    lr_scheduler_num_cycles: int = 1,
    lr_scheduler_power: float = 1.0,
) -> LRScheduler:
    """The schedule sd-scripts' get_scheduler_fix would build (transformers' schedule functions).
    Call scheduler.step() after each optimizer.step(). A piecewise learning_rate replaces
    lr_scheduler; Adafactor with relative_step uses its AdafactorSchedule. To resume, build the
    optimizer and scheduler from the same config, then load both state dicts."""
    from transformers import optimization as schedules

    name = str(lr_scheduler).strip().lower()
    if name not in LR_SCHEDULERS:
        raise ConfigError(
            f"lr_scheduler {lr_scheduler!r} is not supported{did_you_mean(name, LR_SCHEDULERS)}; "
            f"choose one of {', '.join(LR_SCHEDULERS)}"
        )
    if max_train_steps < 1:
        raise ConfigError(f"max_train_steps {max_train_steps}: expected at least 1")
    warmup = resolve_warmup_steps(lr_warmup_steps, max_train_steps)
    rate = parse_learning_rate(learning_rate)

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
        if name != "constant":
            log.warning(f"lr_scheduler {name} is ignored: Adafactor with relative_step=True")
        return schedules.AdafactorSchedule(optimizer, initial_lr=rate)

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

    if warmup >= max_train_steps and name != "constant":
        log.warning(f"lr_warmup_steps {warmup} >= max_train_steps {max_train_steps}")
    if name == "constant":
        if warmup:  # sd-scripts refuses this too: the warm-up would silently do nothing
            raise ConfigError(
                f"lr_warmup_steps {lr_warmup_steps}: lr_scheduler constant has no warm-up; "
                "use constant_with_warmup or set lr_warmup_steps=0"
            )
        return schedules.get_constant_schedule(optimizer)
    if name == "constant_with_warmup":
        return schedules.get_constant_schedule_with_warmup(optimizer, num_warmup_steps=warmup)
    steps = {"num_warmup_steps": warmup, "num_training_steps": max_train_steps}
    if name == "linear":
        return schedules.get_linear_schedule_with_warmup(optimizer, **steps)
    if name == "cosine":
        return schedules.get_cosine_schedule_with_warmup(optimizer, **steps)
    if name == "cosine_with_restarts":
        return schedules.get_cosine_with_hard_restarts_schedule_with_warmup(
            optimizer, num_cycles=lr_scheduler_num_cycles, **steps
        )
    try:
        return schedules.get_polynomial_decay_schedule_with_warmup(
            optimizer, power=lr_scheduler_power, **steps
        )
    except ValueError as error:  # the rate must be above its end rate, 1e-7
        raise ConfigError(f"lr_scheduler polynomial: {error}") from error
