"""What the user types for the optimizer: the learning rate (a number, or AUTOMATIC1111's
piecewise "rate:until_step, ..." text) and sd-scripts' optimizer_args ("key=value").

Torch-free: the config loader and the GUI check these as the user types.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ti_core.errors import ConfigError, closest

PIECEWISE_EXAMPLE = '"0.005:100, 1e-3:1000, 1e-5"'


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = closest(word, choices)
    return f" (did you mean {close}?)" if close else ""


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
    if optimizer_args is None:
        return {}
    if isinstance(optimizer_args, str):
        optimizer_args = optimizer_args.split()
    kwargs: dict[str, Any] = {}
    for arg in optimizer_args:
        key, sep, value_text = str(arg).partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ConfigError(f"optimizer_args {arg!r}: expected key=value, e.g. weight_decay=0.01")
        if key in kwargs:
            raise ConfigError(f"optimizer_args {arg!r}: {key} is given twice")
        value_text = value_text.strip()
        if value_text.lower() in ("true", "false"):
            kwargs[key] = value_text.lower() == "true"
            continue
        try:
            kwargs[key] = ast.literal_eval(value_text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise ConfigError(
                f"optimizer_args {arg!r}: {value_text!r} is not a value; use a number, "
                "True/False, None, a tuple like 0.9,0.99 or a quoted string"
            ) from None
    return kwargs
