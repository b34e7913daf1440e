"""Optimizers for the trainable embedding rows, named and behaving as in kohya-ss sd-scripts'
get_optimizer (every name it knows, any torch.optim class or module.Class), and the
schedule-free optimizers' train/eval modes. Schedules are in schedules.py.

torch and the optimizer libraries load only when an optimizer is built; what the user types
(names, learning rate text, optimizer_args) is parsed in optim_args.py.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ti_core.errors import ConfigError
from ti_core.training.optim_args import (
    LR_SCHEDULERS,
    OPTIMIZER_TYPES,
    PiecewiseRate,
    did_you_mean,
    parse_learning_rate,
    parse_optimizer_args,
    resolve_optimizer_type,
)
from ti_core.training.schedules import build_scheduler, is_schedule_free, resolve_warmup_steps

if TYPE_CHECKING:
    import torch
    from torch.optim.lr_scheduler import LRScheduler

    from ti_core.config.run_config import OptimizerConfig

__all__ = [
    "LR_SCHEDULERS",
    "OPTIMIZER_TYPES",
    "PiecewiseRate",
    "build_optimizer",
    "build_scheduler",
    "check_optimizer_settings",
    "current_lr",
    "optimizer_eval_mode",
    "optimizer_for_config",
    "optimizer_train_mode",
    "parse_learning_rate",
    "parse_optimizer_args",
    "resolve_warmup_steps",
    "scheduler_for_config",
]

log = logging.getLogger(__name__)

# Where each name of OPTIMIZER_TYPES comes from: (module, class). sd-scripts takes Lion from
# lion_pytorch; bitsandbytes' 32-bit Lion is the same update (decoupled weight decay, sign of
# the interpolated momentum), runs on CPU and keeps today's runs resuming bit for bit.
_OPTIMIZER_CLASSES: dict[str, tuple[str, str]] = {
    "AdamW": ("torch.optim", "AdamW"),
    "AdamW8bit": ("bitsandbytes.optim", "AdamW8bit"),
    "PagedAdamW": ("bitsandbytes.optim", "PagedAdamW"),
    "PagedAdamW8bit": ("bitsandbytes.optim", "PagedAdamW8bit"),
    "PagedAdamW32bit": ("bitsandbytes.optim", "PagedAdamW32bit"),
    "Lion": ("bitsandbytes.optim", "Lion"),
    "Lion8bit": ("bitsandbytes.optim", "Lion8bit"),
    "PagedLion8bit": ("bitsandbytes.optim", "PagedLion8bit"),
    "SGDNesterov": ("torch.optim", "SGD"),
    "SGDNesterov8bit": ("bitsandbytes.optim", "SGD8bit"),
    "DAdaptation": ("dadaptation.experimental", "DAdaptAdamPreprint"),
    "DAdaptAdamPreprint": ("dadaptation.experimental", "DAdaptAdamPreprint"),
    "DAdaptAdaGrad": ("dadaptation", "DAdaptAdaGrad"),
    "DAdaptAdam": ("dadaptation", "DAdaptAdam"),
    "DAdaptAdan": ("dadaptation", "DAdaptAdan"),
    "DAdaptAdanIP": ("dadaptation.experimental", "DAdaptAdanIP"),
    "DAdaptLion": ("dadaptation", "DAdaptLion"),
    "DAdaptSGD": ("dadaptation", "DAdaptSGD"),
    "Prodigy": ("prodigyopt", "Prodigy"),
    "Adafactor": ("transformers.optimization", "Adafactor"),
    "RAdamScheduleFree": ("schedulefree", "RAdamScheduleFree"),
    "AdamWScheduleFree": ("schedulefree", "AdamWScheduleFree"),
    "SGDScheduleFree": ("schedulefree", "SGDScheduleFree"),
}
# The pins of requirements.txt, for the "how to install it" message.
_INSTALL = {
    "bitsandbytes": "bitsandbytes==0.50.2",
    "dadaptation": "dadaptation==3.2",
    "prodigyopt": "prodigyopt==1.1.2",
    "schedulefree": "schedulefree==1.4.1",
    "transformers": "transformers==5.23.0",
}
_NESTEROV = ("SGDNesterov", "SGDNesterov8bit")
_SETS_OWN_STEP = ("DAdapt", "Prodigy")  # name prefixes: lr multiplies the step they find


# ---- optimizers -----------------------------------------------------------------------------


def _optimizer_class(name: str) -> Any:
    """The class for a resolved optimizer name, importing its library only now."""
    if name not in _OPTIMIZER_CLASSES:
        return _custom_optimizer_class(name)
    module_name, class_name = _OPTIMIZER_CLASSES[name]
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except Exception as error:  # ImportError, or a library build that cannot load here
        package = _INSTALL.get(module_name.split(".")[0], module_name.split(".")[0])
        raise ConfigError(
            f"optimizer_type {name} needs {package.split('==')[0]}, which cannot be "
            f"loaded ({type(error).__name__}: {error}); install it with: pip install {package}"
        ) from error


def _custom_optimizer_class(name: str) -> Any:
    """sd-scripts' "any optimizer": a torch.optim class name, or module.Class imported."""
    import torch

    module_name, _, class_name = name.rpartition(".")
    if module_name:
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise ConfigError(
                f"optimizer_type {name}: cannot import {module_name} ({error}); install the "
                "package that provides it"
            ) from error
    else:
        module = torch.optim
    classes = {n: c for n, c in vars(module).items() if isinstance(c, type)}
    optimizer_class = classes.get(class_name)
    if optimizer_class is None and not module_name:  # a torch.optim class in any case
        optimizer_class = {n.lower(): c for n, c in classes.items()}.get(class_name.lower())
    if optimizer_class is None:
        if module_name:
            raise ConfigError(
                f"optimizer_type {name}: {module_name} has no class {class_name!r}"
                f"{did_you_mean(class_name, classes)}"
            )
        known = [*OPTIMIZER_TYPES, *(n for n, c in classes.items() if _is_optimizer(c))]
        raise ConfigError(
            f"optimizer_type {name!r} is not supported{did_you_mean(name, known)}; choose one "
            f"of {', '.join(OPTIMIZER_TYPES)}, a torch.optim class (e.g. RAdam) or module.Class"
        )
    if not _is_optimizer(optimizer_class):
        raise ConfigError(f"optimizer_type {name}: not an optimizer (a torch.optim.Optimizer)")
    return optimizer_class


def _is_optimizer(candidate: Any) -> bool:
    import torch

    return isinstance(candidate, type) and issubclass(candidate, torch.optim.Optimizer)


def _check_keywords(name: str, optimizer_class: Any, kwargs: dict, reserved: dict) -> None:
    """Refuse optimizer_args the optimizer would reject, naming what it accepts."""
    for key, owner in reserved.items():
        if key in kwargs:
            raise ConfigError(f"optimizer_args: {key} cannot be set for {name}; {owner}")
    parameters = inspect.signature(optimizer_class.__init__).parameters.values()
    if any(parameter.kind is parameter.VAR_KEYWORD for parameter in parameters):
        return
    allowed = [p.name for p in parameters if p.name not in ("self", "params", *reserved)]
    for key in kwargs:
        if key not in allowed:
            raise ConfigError(
                f"optimizer_args: {name} has no argument {key!r}"
                f"{did_you_mean(key, allowed)}; allowed: {', '.join(allowed)}"
            )


def _adafactor_rate(
    kwargs: dict, rate: float | PiecewiseRate, lr: float, text: Any
) -> float | None:
    """sd-scripts' Adafactor defaults: relative_step unless turned off; then lr is unused."""
    kwargs.setdefault("relative_step", True)
    if kwargs.get("warmup_init") and not kwargs["relative_step"]:
        log.info("Adafactor: warmup_init=True needs relative_step=True; turning it on")
        kwargs["relative_step"] = True
    if not kwargs["relative_step"]:
        return lr
    if isinstance(rate, PiecewiseRate):
        raise ConfigError(
            f"learning_rate {str(text)!r}: a piecewise schedule cannot drive "
            "Adafactor with relative_step=True; add relative_step=False to optimizer_args"
        )
    if lr != 0:
        log.warning(
            f"Adafactor with relative_step=True sets its own step size; learning_rate "
            f"{lr} is only reported as the initial rate (add relative_step=False to use it)"
        )
    return None


def build_optimizer(
    params: Iterable[torch.Tensor],
    optimizer_type: str,
    learning_rate: float | str | PiecewiseRate,
    optimizer_args: Sequence[str] | str | None = (),
    *,
    use_8bit_adam: bool = False,
    use_lion_optimizer: bool = False,
) -> torch.optim.Optimizer:
    """The optimizer sd-scripts' get_optimizer would build for `optimizer_type` (any case),
    over `params`: the small (N, dim) embedding rows, one tensor per text encoder, in one group.
    A piecewise learning_rate starts the optimizer at its first rate (build_scheduler drives it).
    A schedule-free optimizer comes back in train mode."""
    name = resolve_optimizer_type(optimizer_type, use_8bit_adam, use_lion_optimizer)
    params = list(params)
    if not params:
        raise ValueError("build_optimizer needs at least one trainable tensor")
    rate = parse_learning_rate(learning_rate)
    lr = rate.initial_rate if isinstance(rate, PiecewiseRate) else rate
    kwargs = parse_optimizer_args(optimizer_args)
    if name == "Lion" and kwargs.pop("use_triton", None) is not None:
        log.warning("optimizer_args: use_triton (a lion_pytorch option) is ignored")
    reserved = {"lr": "set it with learning_rate"}
    if name in _NESTEROV:
        reserved["nesterov"] = f"{name} always uses Nesterov momentum"
    optimizer_class = _optimizer_class(name)
    _check_keywords(name, optimizer_class, kwargs, reserved)

    if name in _NESTEROV:
        kwargs.setdefault("momentum", 0.9)  # sd-scripts' default: Nesterov needs momentum
        kwargs["nesterov"] = True
    elif name.startswith(_SETS_OWN_STEP) and lr <= 0.1:
        log.warning(
            f"learning_rate {lr} is low for {name}, which adapts the step size itself; "
            "sd-scripts recommends learning_rate=1.0"
        )
    elif name == "Adafactor":
        lr = _adafactor_rate(kwargs, rate, lr, learning_rate)

    try:
        optimizer = optimizer_class(params, lr=lr, **kwargs)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"optimizer_args for {name}: {error}") from error
    log.info(
        f"optimizer: {name} ({optimizer_class.__module__}.{optimizer_class.__name__}) {kwargs}"
    )
    optimizer_train_mode(optimizer)  # as sd-scripts: ready to step until told to eval()
    return optimizer


def optimizer_for_config(
    params: Iterable[torch.Tensor], options: OptimizerConfig
) -> torch.optim.Optimizer:
    """build_optimizer with the [optimizer] section's values."""
    return build_optimizer(
        params, options.optimizer_type, options.learning_rate, options.optimizer_args,
        use_8bit_adam=options.use_8bit_adam, use_lion_optimizer=options.use_lion_optimizer,
    )  # fmt: skip


def scheduler_for_config(
    optimizer: torch.optim.Optimizer, options: OptimizerConfig, max_train_steps: int
) -> LRScheduler:
    """build_scheduler with the [optimizer] section's values."""
    return build_scheduler(
        optimizer, options.lr_scheduler, options.learning_rate, max_train_steps,
        options.lr_warmup_steps, options.lr_scheduler_num_cycles, options.lr_scheduler_power,
        lr_decay_steps=options.lr_decay_steps,
        lr_scheduler_min_lr_ratio=options.lr_scheduler_min_lr_ratio,
        lr_scheduler_timescale=options.lr_scheduler_timescale,
        lr_scheduler_type=options.lr_scheduler_type,
        lr_scheduler_args=options.lr_scheduler_args,
    )  # fmt: skip


def check_optimizer_settings(options: OptimizerConfig, max_train_steps: int | None = None) -> None:
    """Build the optimizer and schedule once over a stand-in tensor, quietly, so that a wrong
    name, a missing package or a bad optimizer_args / lr_scheduler_args stops the run before
    any model loads. max_train_steps None (not known yet: max_train_epochs) skips the checks
    that need the real step count."""
    import torch

    quiet = logging.getLogger("ti_core.training")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the real build says it all again
    try:
        optimizer = optimizer_for_config([torch.zeros(1, 8, requires_grad=True)], options)
        scheduler_for_config(optimizer, options, max_train_steps or 10**9)
    finally:
        quiet.setLevel(level)


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The step size to log: d*lr for Prodigy and D-Adaptation (as sd-scripts logs it),
    Adafactor's own relative step size when it sets one, the (scheduled) lr otherwise.
    First parameter group."""
    group = optimizer.param_groups[0]
    lr = group["lr"]
    if "d" in group:  # Prodigy / D-Adaptation: lr is a multiplier of the step size d
        return float(group["d"] * lr)
    if group.get("relative_step"):
        state = optimizer.state.get(group["params"][0])
        if state:
            return float(optimizer._get_lr(group, state))
    return float(lr) if lr is not None else 0.0


# ---- schedule-free: train and eval modes ----------------------------------------------------


def optimizer_train_mode(optimizer: torch.optim.Optimizer) -> None:
    """Before a training step: a schedule-free optimizer moves the weights to the point it
    takes gradients at. Cheap and idempotent; a no-op for every other optimizer."""
    if is_schedule_free(optimizer):
        optimizer.train()


def optimizer_eval_mode(optimizer: torch.optim.Optimizer) -> None:
    """Before the weights are read (samples, validation, saving vectors or state): a
    schedule-free optimizer moves them to its averaged point, the one to keep. A no-op for
    every other optimizer."""
    if is_schedule_free(optimizer):
        optimizer.eval()
