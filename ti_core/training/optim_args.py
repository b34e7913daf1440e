"""What the user types for the optimizer: its name, the learning rate (a number, or
AUTOMATIC1111's piecewise "rate:until_step, ..." text) and sd-scripts' optimizer_args and
lr_scheduler_args ("key=value").

Torch-free: the config declares its options from the names here, and the config loader and
the GUI check these as the user types.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ti_core.errors import ConfigError, closest

PIECEWISE_EXAMPLE = '"0.005:100, 1e-3:1000, 1e-5"'

# Every optimizer name sd-scripts' train_textual_inversion.py knows, as it spells them (matched
# in any case). The config's optimizer_type also takes a torch.optim class or any module.Class;
# where each one comes from is in optim.py (_OPTIMIZER_CLASSES), one entry per name here.
OPTIMIZER_TYPES: tuple[str, ...] = (
    "AdamW",
    "AdamW8bit",
    "PagedAdamW",
    "PagedAdamW8bit",
    "PagedAdamW32bit",
    "Lion",
    "Lion8bit",
    "PagedLion8bit",
    "SGDNesterov",
    "SGDNesterov8bit",
    "DAdaptation",
    "DAdaptAdamPreprint",
    "DAdaptAdaGrad",
    "DAdaptAdam",
    "DAdaptAdan",
    "DAdaptAdanIP",
    "DAdaptLion",
    "DAdaptSGD",
    "Prodigy",
    "Adafactor",
    "RAdamScheduleFree",
    "AdamWScheduleFree",
    "SGDScheduleFree",
)
# sd-scripts' lr_scheduler names (transformers' schedules, diffusers' piecewise_constant, and
# adafactor: Adafactor's own relative step size). Built in schedules.py.
LR_SCHEDULERS: tuple[str, ...] = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "inverse_sqrt",
    "cosine_with_min_lr",
    "warmup_stable_decay",
    "piecewise_constant",
    "adafactor",
)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = closest(word, choices)
    return f" (did you mean {close}?)" if close else ""


# ---- the optimizer's name -------------------------------------------------------------------


def resolve_optimizer_type(
    optimizer_type: str, use_8bit_adam: bool = False, use_lion_optimizer: bool = False
) -> str:
    """The optimizer to build: a name of OPTIMIZER_TYPES as spelled there when it is one (any
    case), else the text as typed (a torch.optim class or module.Class, checked when built).
    sd-scripts' older switches use_8bit_adam / use_lion_optimizer stand for AdamW8bit / Lion;
    an empty name is AdamW, sd-scripts' default."""
    text = str(optimizer_type).strip()
    if use_8bit_adam and use_lion_optimizer:
        raise ConfigError("use_8bit_adam and use_lion_optimizer are both on; turn one off")
    if use_8bit_adam or use_lion_optimizer:
        switch, wanted = (
            ("use_8bit_adam", "AdamW8bit") if use_8bit_adam else ("use_lion_optimizer", "Lion")
        )
        # "AdamW" is our default, so it cannot tell a chosen optimizer from an untouched field
        if text.lower() not in ("", "adamw", wanted.lower()):
            raise ConfigError(
                f"{switch} (optimizer_type {wanted}) and optimizer_type {text} both choose an "
                f"optimizer; drop {switch} or set optimizer_type = {wanted!r}"
            )
        return wanted
    if not text:
        return "AdamW"
    canonical = {name.lower(): name for name in OPTIMIZER_TYPES}
    return canonical.get(text.lower(), text)


# ---- learning rate: a number, or A1111's "rate:until_step, ..." ------------------------------


@dataclass(frozen=True)
class PiecewiseRate:
    """AUTOMATIC1111's learning-rate schedule: each (rate, end_step) piece holds for the
    optimizer steps numbered below end_step (0-based, so "0.005:100" covers the first 100
    steps); end_step None means "to the end of training". A1111 stops training at the last
    end_step when it is not open-ended; rate_at() keeps the last rate after it."""

    pieces: tuple[tuple[float, int | None], ...]

    def rate_at(self, step: int) -> float:
        """The rate for the optimizer step numbered `step` (0 = the first step)."""
        for rate, end_step in self.pieces:
            if end_step is None or step < end_step:
                return rate
        return self.pieces[-1][0]

    @property
    def initial_rate(self) -> float:
        return self.rate_at(0)

    @property
    def end_step(self) -> int | None:
        """The step where A1111 would stop training (None when the last rate is open-ended)."""
        return self.pieces[-1][1]

    def __str__(self) -> str:
        return ", ".join(
            f"{rate!r}" if end is None else f"{rate!r}:{end}" for rate, end in self.pieces
        )


def _rate_error(text: str, problem: str) -> ConfigError:
    return ConfigError(
        f"learning_rate {text!r}: {problem}; expected a number like 1e-4 or a schedule like "
        f"{PIECEWISE_EXAMPLE} (rate:until_step, ..., last rate)"
    )


def _parse_rate(rate_text: str, text: str) -> float:
    try:
        rate = float(rate_text)
    except ValueError:
        raise _rate_error(text, f"{rate_text.strip()!r} is not a number") from None
    if not math.isfinite(rate) or rate < 0:
        raise _rate_error(text, f"rate {rate_text.strip()} must be a finite number >= 0")
    return rate


def parse_learning_rate(value: float | str | PiecewiseRate) -> float | PiecewiseRate:
    """A learning rate as a float, or A1111's piecewise schedule ("0.005:100, 1e-3:1000, 1e-5":
    0.005 for steps 0-99, 1e-3 for steps 100-999, then 1e-5). "-1" as a step means "to the end",
    as in A1111. A plain number (or number string) gives a float."""
    if isinstance(value, PiecewiseRate):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _rate_error(repr(value), "not a number or a schedule string")
    text = str(value).strip()
    pieces: list[tuple[float, int | None]] = []
    for part in text.split(","):
        if not part.strip():
            raise _rate_error(text, "a piece is empty (a stray comma?)")
        if pieces and pieces[-1][1] is None:
            raise _rate_error(text, f"{part.strip()!r} follows a rate with no end step")
        rate_text, _, step_text = part.partition(":")
        rate = _parse_rate(rate_text, text)
        if not step_text.strip():
            if ":" in part or not rate_text.strip():
                raise _rate_error(text, f"piece {part.strip()!r} is incomplete")
            pieces.append((rate, None))
            continue
        try:
            end_step = int(step_text)
        except ValueError:
            raise _rate_error(text, f"step {step_text.strip()!r} is not a whole number") from None
        if end_step == -1:
            pieces.append((rate, None))
            continue
        previous = pieces[-1][1] if pieces else 0
        if end_step <= previous:
            raise _rate_error(text, f"step {end_step} must be greater than {previous}")
        pieces.append((rate, end_step))
    if len(pieces) == 1 and pieces[0][1] is None:
        return pieces[0][0]
    return PiecewiseRate(tuple(pieces))


# ---- optimizer_args -------------------------------------------------------------------------


def parse_optimizer_args(optimizer_args: Sequence[str] | str | None) -> dict[str, Any]:
    """sd-scripts' `key=value` optimizer arguments: values are Python literals, so
    "betas=0.9,0.99" is a tuple and "relative_step=False" a bool (true/false are accepted too).
    A single string is split on whitespace, as kohya_ss' GUI writes it."""
    return parse_key_values(optimizer_args, "optimizer_args", "weight_decay=0.01")


def parse_scheduler_args(lr_scheduler_args: Sequence[str] | str | None) -> dict[str, Any]:
    """sd-scripts' lr_scheduler_args, read as optimizer_args are ("T_max=100")."""
    return parse_key_values(lr_scheduler_args, "lr_scheduler_args", "T_max=100")


def parse_key_values(args: Sequence[str] | str | None, option: str, example: str) -> dict[str, Any]:
    """`key=value` items with Python-literal values, for the option named `option`."""
    if args is None:
        return {}
    if isinstance(args, str):
        args = args.split()
    kwargs: dict[str, Any] = {}
    for arg in args:
        key, sep, value_text = str(arg).partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ConfigError(f"{option} {arg!r}: expected key=value, e.g. {example}")
        if key in kwargs:
            raise ConfigError(f"{option} {arg!r}: {key} is given twice")
        value_text = value_text.strip()
        if value_text.lower() in ("true", "false"):
            kwargs[key] = value_text.lower() == "true"
            continue
        try:
            kwargs[key] = ast.literal_eval(value_text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise ConfigError(
                f"{option} {arg!r}: {value_text!r} is not a value; use a number, "
                "True/False, None, a tuple like 0.9,0.99 or a quoted string"
            ) from None
    return kwargs
