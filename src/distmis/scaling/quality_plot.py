"""The time-to-quality figure: each run's best validation Dice so far against wall-clock time.

The curves and times to best are :mod:`~distmis.scaling.quality`'s; this module only draws
them, one panel per G so the parallelism modes at one G sit side by side.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from distmis.scaling.quality import (
    DEFAULT_TOLERANCE,
    QualityCurve,
    check_tolerance,
    quality_curve,
)
from distmis.scaling.style import save_figure, series_styles
from distmis.scaling.timings import Run

log = logging.getLogger(__name__)


def quality_figure(curves: Sequence[QualityCurve], noun: str = "GPUs") -> Figure:
    """Best validation Dice so far against time, one panel per G, a step curve per run.

    Each curve is drawn to its run's makespan (where a ``|`` marks the run's end) with a
    marker at its time to best; colour is the mode label, line style and marker the backend,
    the marker's fill the search: one legend entry per series (``curve.series``: backend,
    mode label, search), labelled as in every scaling figure (:func:`series_styles`).
    ``noun`` is what G counts (GPUs, or CPU workers standing in for them).
    """
    counts = sorted({curve.gpus for curve in curves}) or [0]
    columns = min(len(counts), 3)
    rows = math.ceil(len(counts) / columns)
    figure = Figure(figsize=(4.3 * columns + 0.6, 3.3 * rows + 1.3), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, sharey=True, squeeze=False).ravel()
    for ax in axes[len(counts) :]:
        ax.set_visible(False)
    drawn = [c for c in curves if c.seconds]
    # Styles and labels among the curves drawn, so a run without one adds no legend entry.
    styles = series_styles((c.series for c in drawn), noun)
    for ax, gpus in zip(axes, counts, strict=False):
        for curve in (c for c in drawn if c.gpus == gpus):
            style = styles[curve.series]
            # Held at the final best until the run ended: how long it kept going after that.
            xs = [*curve.seconds, max(curve.makespan_seconds, curve.seconds[-1])]
            ys = [*curve.best_dice, curve.final_best]
            ax.step(xs, ys, where="post", color=style.colour, linestyle=style.linestyle)
            ax.plot([xs[-1]], [ys[-1]], marker="|", markersize=12, color=style.colour)
            reached_seconds, reached_dice = curve.reached
            ax.plot(
                [reached_seconds],
                [reached_dice],
                **style.line | {"linestyle": "none"},
                markersize=8,
                markeredgecolor="black",
            )
        ax.set_title(f"G = {gpus} {noun if gpus != 1 else noun.removesuffix('s')}", fontsize=10)
        ax.set_xlabel("wall-clock seconds since the run started")
        ax.set_xlim(left=0)
        ax.grid(True, alpha=0.3)
    for ax in axes[::columns]:
        ax.set_ylabel("best validation Dice so far")
    if not styles:
        axes[0].text(
            0.5, 0.5, "no run has a validation yet", ha="center", transform=axes[0].transAxes
        )
    # One entry per series, in key order: its line, and where the study holds several
    # searches its marker too, whose fill tells them apart.
    several = len({style.fillstyle for style in styles.values()}) > 1
    handles = [
        Line2D(
            [],
            [],
            **(style.line if several else {"color": style.colour, "linestyle": style.linestyle}),
            markeredgecolor="black",
            label=style.label,
        )
        for style in styles.values()
    ]
    tolerance = curves[0].tolerance if curves else DEFAULT_TOLERANCE
    handles += [
        Line2D(
            [],
            [],
            marker="o",
            markeredgecolor="black",
            color="0.5",
            linestyle="none",
            label=f"time to best: first within {tolerance:g} Dice of the run's final best",
        ),
        Line2D([], [], marker="|", markersize=12, color="0.3", linestyle="none", label="run ends"),
    ]
    figure.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8)
    title = "Time to quality: the best model found so far during each run"
    figure.suptitle(title, fontsize=11)
    return figure


def plot_quality(
    runs: Sequence[Run], stem: Path, quality_tolerance: float = DEFAULT_TOLERANCE
) -> list[Path]:
    """The time-to-quality figure of ``runs`` (see :func:`quality_figure`)."""
    quality_tolerance = check_tolerance(quality_tolerance)
    curves = [quality_curve(run, quality_tolerance) for run in runs]
    for curve in curves:
        if not curve.seconds:
            log.warning(
                "%s at G = %d has no validation (every trial failed first): no quality curve",
                "/".join(curve.series),
                curve.gpus,
            )
    cpu = bool(runs) and all(run.summary.uses_gpus is False for run in runs)
    return save_figure(quality_figure(curves, "CPU workers" if cpu else "GPUs"), stem)
