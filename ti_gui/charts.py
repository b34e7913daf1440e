"""The Run view's loss chart: named lines of (step, value), drawn with numeric axes from the
very first frame (gradio fixes a chart's axis types and colours when it first draws it)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import gradio as gr
import pandas as pd

MAX_CHART_POINTS = 1500
SMOOTHING = 0.9  # exponential moving average of the loss, as TensorBoard's slider
LOSS_LINES = ("raw", "smoothed")  # the training loss; further lines (validation) follow these
COLOURS = {"raw": "#9ecae1", "smoothed": "#1f77b4", "validation": "#ff7f0e"}
MORE_COLOURS = ("#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")

Points = Sequence[tuple[int, float]]


def loss_plot() -> gr.LinePlot:
    """The chart, empty until the first update (which `loss_update` makes with its layout)."""
    return gr.LinePlot(
        x="step",
        y="loss",
        color="line",
        title="Loss",
        x_title="step",
        y_title="loss",
        color_map=dict(COLOURS),
        x_lim=[0, None],
        height=280,
        elem_id="loss-chart",
    )


def loss_update(
    losses: Points,
    total_steps: int,
    lines: Mapping[str, Points] | None = None,
    drawn: list[Any] | None = None,
) -> tuple[dict[str, Any], list[Any]]:
    """(the chart's update, its layout). The layout (x range, line names) goes out only when it
    differs from `drawn`, the layout sent last: a changed x_lim or colour map makes the page
    build the chart anew, with the axis types of the frame it then holds (always numeric)."""
    lines = dict(lines or {})
    frame = loss_frame(losses, lines)
    names = [*LOSS_LINES, *lines]
    layout = [int(total_steps or 0), names]
    if layout == drawn:
        return gr.update(value=frame), layout
    return gr.update(
        value=frame,
        x_lim=[0, layout[0] or None],
        color_map=colour_map(names),
        colors_in_legend=names,
    ), layout


def colour_map(names: Sequence[str]) -> dict[str, str]:
    spare = iter(MORE_COLOURS * (1 + len(names) // len(MORE_COLOURS)))
    return {name: COLOURS.get(name) or next(spare) for name in names}


def loss_frame(losses: Points, lines: Mapping[str, Points] | None = None) -> pd.DataFrame:
    """step, loss, line: the rows of the chart, raw and smoothed loss thinned to its width.

    The columns are float64 whatever the rows (none, one, a NaN loss) and every line has one
    row with no value: gradio calls an empty or object column nominal (a tick label per
    value), and the page keeps the types and line names of the first frame it draws."""
    steps: list[float] = []
    values: list[float] = []
    names: list[str] = []

    def add(step: float, value: float, name: str) -> None:
        steps.append(step)
        values.append(value)
        names.append(name)

    for name in [*LOSS_LINES, *(lines or {})]:
        add(math.nan, math.nan, name)  # not drawn (no value); it names the line from the start
    for step, raw, smoothed in _smoothed(losses):
        add(step, raw, "raw")
        add(step, smoothed, "smoothed")
    finite = sum(1 for _, loss in losses if math.isfinite(_number(loss)))
    for name, points in (lines or {}).items():
        # Drawn once the loss spans the y-axis: a lone validation point at step 0 would give a
        # chart whose y range is one value (a single tick), and gradio keeps that first frame.
        for step, value in points if finite >= 2 else ():
            add(step, _number(value), name)
    return pd.DataFrame(
        {
            "step": pd.Series(steps, dtype="float64"),
            "loss": pd.Series(values, dtype="float64"),
            "line": pd.Series(names, dtype="string"),
        }
    )


def lines_plot(title: str, y_title: str, elem_id: str) -> gr.LinePlot:
    """A small chart of named lines over steps (vector norm, drift), numeric from the start."""
    return gr.LinePlot(
        x="step", y="value", color="line", title=title, x_title="step", y_title=y_title,
        x_lim=[0, None], height=220, elem_id=elem_id,
    )  # fmt: skip


def lines_update(
    lines: Mapping[str, Points], total_steps: int, drawn: list[Any] | None = None
) -> tuple[dict[str, Any], list[Any]]:
    """As loss_update, for a chart of `lines` only (no loss lines)."""
    names = list(lines)
    steps, values, labels = [], [], []
    for name in names:
        for step, value in [(math.nan, math.nan), *lines[name]]:
            steps.append(step)
            values.append(_number(value))
            labels.append(name)
    frame = pd.DataFrame(
        {
            "step": pd.Series(steps, dtype="float64"),
            "value": pd.Series(values, dtype="float64"),
            "line": pd.Series(labels, dtype="string"),
        }
    )
    layout = [int(total_steps or 0), names]
    if layout == drawn:
        return gr.update(value=frame), layout
    return gr.update(
        value=frame, x_lim=[0, layout[0] or None], color_map=colour_map(names),
        colors_in_legend=names,
    ), layout  # fmt: skip


def health_lines(vectors: Sequence[Mapping[str, Any]]) -> tuple[dict, dict]:
    """From `vectors` events: ({norm lines}, {drift lines}) per text encoder: the largest norm
    and drift of its vectors, and the vocabulary's median norm to compare the norm with."""
    norms: dict[str, list] = {}
    drifts: dict[str, list] = {}
    for event in vectors:
        step = event.get("step", 0)
        for name, figures in (event.get("encoders") or {}).items():
            if not figures:
                continue
            norms.setdefault(f"norm ({name})", []).append(
                (step, max(_number(v.get("norm")) for v in figures))
            )
            median = (event.get("vocab_median_norm") or {}).get(name)
            norms.setdefault(f"vocabulary median ({name})", []).append((step, _number(median)))
            drifts.setdefault(f"drift ({name})", []).append(
                (step, max(_number(v.get("drift")) for v in figures))
            )
    return norms, drifts


def _smoothed(losses: Points) -> list[tuple[int, float, float]]:
    """(step, loss, smoothed loss), every stride-th point and the last. A loss that is not a
    finite number is shown as a gap and leaves the smoothed line as it was."""
    rows = []
    smoothed, weight = 0.0, 0.0
    stride = max(1, len(losses) // MAX_CHART_POINTS)
    for index, (step, loss) in enumerate(losses):
        loss = _number(loss)
        if math.isfinite(loss):
            smoothed = SMOOTHING * smoothed + (1 - SMOOTHING) * loss
            weight = SMOOTHING * weight + (1 - SMOOTHING)
        if index % stride == 0 or index == len(losses) - 1:
            rows.append((step, loss, smoothed / weight if weight else math.nan))
    return rows


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
