"""The planner's figure: predicted speedup vs G from ``plan.csv``, measured beside it.

Two panels: the measured study (the grid and sizes of the runs that were measured, on the
machine that measured them; predicted lines, measured speedups as filled markers) and the
projected study (the target grid, e.g. the paper's, with the ideal line and published
references as stars). Colours, backend styles and saving are :mod:`distmis.scaling.style`'s,
so a reader who learnt the scaling figures' key reads this one too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from distmis import modes
from distmis.errors import ContractError
from distmis.scaling.plot import (
    IDEAL_COLOUR,
    Reference,
    log2_axis,
    log2_speedup_axis,
    plot_reference,
)
from distmis.scaling.style import (
    BACKEND_STYLES,
    HYBRID_LABEL,
    mode_colour,
    mode_name,
    save_figure,
)

MADE_BY = "rule plan / distmis plan"
# The columns the figure reads; plan.csv has more (see distmis.plan.run), unread here.
PLOT_COLUMNS = (
    "backend",
    "study",
    "mode",
    "gpus_per_trial",
    "gpus",
    "speedup",
    "measured_speedup",
    "step_seconds",
    "assumptions",
)
STUDIES = ("measured", "projected")


def read_plan_csv(path: Path) -> pd.DataFrame:
    """``plan.csv`` as a table, one row per (backend, study, mode, gpus_per_trial, G).

    Blank measured cells read as NaN. Raises :class:`ContractError` naming ``path`` and its
    maker when the file is missing or empty, lacks a column the figure reads, or names a
    study other than measured/projected.
    """
    path = Path(path)
    try:
        table = pd.read_csv(path)
    except FileNotFoundError:
        raise ContractError(f"{path} is missing: it is written by {MADE_BY}") from None
    except pd.errors.EmptyDataError:
        raise ContractError(f"{path} is empty: rerun {MADE_BY}") from None
    missing = [column for column in PLOT_COLUMNS if column not in table.columns]
    if missing:
        raise ContractError(f"{path} lacks column(s) {', '.join(missing)}: rerun {MADE_BY}")
    unknown = sorted(set(table["study"]) - set(STUDIES))
    if unknown:
        raise ContractError(
            f"{path} has unknown study {unknown}, expected {STUDIES}: rerun {MADE_BY}"
        )
    return table


def mode_label(mode: str, gpus_per_trial: int) -> str:
    """The scaling figures' mode label: ``data``, ``experiment`` or ``hybrid{k}``."""
    return modes.label(mode, int(gpus_per_trial))


def _series(rows: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(backend, mode label, rows sorted by G) per series: data, experiment, hybrid by k."""
    labels = [mode_label(m, k) for m, k in zip(rows["mode"], rows["gpus_per_trial"], strict=True)]
    series = [
        (backend, label, group.sort_values("gpus"))
        for (backend, label), group in rows.assign(label=labels).groupby(["backend", "label"])
    ]
    return sorted(series, key=lambda s: (s[0], _label_order(s[1])))


def _label_order(label: str) -> tuple[int, str | int]:
    hybrid = HYBRID_LABEL.match(label)  # hybrid2 before hybrid16, not as strings sort
    return (1, int(hybrid.group(1))) if hybrid else (0, label)


def _assumed(cell: str) -> dict[str, object]:
    """Name -> value of one row's assumptions JSON; {} if unreadable (only a title uses it)."""
    try:
        entries = json.loads(cell)
        return {name: entry["value"] for name, entry in entries.items() if "value" in entry}
    except (TypeError, ValueError, AttributeError):
        return {}


def _study_title(study: str, rows: pd.DataFrame) -> str:
    """What the panel shows, with the grid, shape and step as far as the plan says them."""
    assumed = _assumed(rows["assumptions"].iloc[0])
    details = []
    if isinstance(assumed.get("grid_size"), int):
        details.append(f"{assumed['grid_size']}-configuration grid")
    # The model names no volume shape yet: the first "*shape" entry, list or text, if any.
    shapes = [v for k, v in assumed.items() if k.endswith("shape") and isinstance(v, list | str)]
    if shapes:
        details.append(shapes[0] if isinstance(shapes[0], str) else "×".join(map(str, shapes[0])))
    steps = rows["step_seconds"].dropna().unique()
    if len(steps) == 1:  # backends stepping at different speeds: no single step to name
        details.append(f"step {steps[0]:.3g} s")
    if study == "measured":
        what = ", ".join(details) if details else "the measured grid"
        return f"Measured study: {what}\npredicted vs measured on the machine that ran it"
    return "Projection: " + (", ".join(details) if details else "target study") + "\n(predicted)"


def _draw_study(ax: Axes, study: str, rows: pd.DataFrame, references: Sequence[Reference]) -> bool:
    """One panel; True when a measured marker was drawn. Per series a predicted line (open
    markers) and, where it has measurements, a line of filled markers (no line style); then,
    on the projected panel only, the ideal line and one star per reference."""
    measured_seen = False
    for backend, label, series in _series(rows):
        marker, style = BACKEND_STYLES.get(backend, ("^", ":"))
        colour = mode_colour(label)
        ax.plot(
            series["gpus"],
            series["speedup"],
            marker=marker,
            linestyle=style,
            color=colour,
            markerfacecolor="white",
            label=f"{mode_name(label)}, {backend}",
        )
        measured = series.dropna(subset=["measured_speedup"])
        if len(measured):
            measured_seen = True
            ax.plot(
                measured["gpus"],
                measured["measured_speedup"],
                marker=marker,
                markersize=9,
                linestyle="none",
                color=colour,
                markeredgecolor="black",
            )
    counts = sorted({int(g) for g in rows["gpus"]})
    values = [*rows["speedup"].dropna(), *rows["measured_speedup"].dropna()]
    if study == "projected":
        counts = sorted({*counts, *(r.gpus for r in references)})
        # On log-log axes the ideal speedup G is a straight line: two points suffice.
        ax.plot(
            [1, counts[-1]],
            [1, counts[-1]],
            color=IDEAL_COLOUR,
            linestyle="--",
            label="ideal (speedup = G)",
        )
        for reference in references:
            plot_reference(ax, reference)
        values += [1, counts[-1], *(r.speedup for r in references)]
    ax.set_xscale("log", base=2)
    log2_axis(ax.xaxis, counts)
    ax.set_xlim(counts[0] / 2**0.5, counts[-1] * 2**0.5)  # end markers off the frame
    # The measuring machine may have run CPU workers in place of GPUs; plan.csv cannot say.
    workers = "GPUs" if study == "projected" else "workers (GPUs, or CPU stand-ins)"
    ax.set_xlabel(f"G, number of {workers} (log₂ scale)")
    log2_speedup_axis(ax, values)
    ax.set_ylabel(
        "speedup (×, log₂ scale) over G = 1\n(data, experiment: same mode; hybrid: experiment)"
    )
    ax.grid(True, alpha=0.3)
    ax.set_title(_study_title(study, rows), fontsize=10)
    return measured_seen


def build_plan_figure(table: pd.DataFrame, references: Sequence[Reference] = ()) -> Figure:
    """One panel per study present (measured left, projected right), one legend below.

    ``table``: plan.csv as :func:`read_plan_csv` reads it. References are drawn on the
    projected panel only: they are results at the paper's size, not the measured one.
    """
    studies = [s for s in STUDIES if (table["study"] == s).any()]
    if not studies:
        raise ValueError("the plan table has no measured or projected rows")
    figure = Figure(figsize=(6.5 * len(studies), 6.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(studies), squeeze=False)[0]
    measured_seen = False
    handles: dict[str, Line2D] = {}
    for ax, study in zip(axes, studies, strict=True):
        measured_seen |= _draw_study(ax, study, table[table["study"] == study], references)
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)  # a series in both panels is keyed once
    if measured_seen:
        handles["measured"] = Line2D(
            [],
            [],
            marker="o",
            markersize=9,
            linestyle="none",
            color="0.5",
            markeredgecolor="black",
            label="measured (filled marker, colour of its series)",
        )
    _fit_legend(figure, list(handles.values()))
    return figure


def _fit_legend(figure: Figure, handles: list[Line2D], most_columns: int = 3) -> None:
    """The legend below the panels in as many columns (up to ``most_columns``) as fit the
    figure's width: three long labels side by side overflowed a one-panel figure, cut at both
    edges (the demo's plan.png)."""
    for ncols in range(min(most_columns, len(handles)), 0, -1):
        legend = figure.legend(handles=handles, loc="outside lower center", ncols=ncols, fontsize=8)
        figure.canvas.draw()
        box = legend.get_window_extent()
        if ncols == 1 or (box.x0 >= 0 and box.x1 <= figure.bbox.width):
            return
        legend.remove()


def plot_plan(table: pd.DataFrame, stem: Path, references: Sequence[Reference] = ()) -> list[Path]:
    """Write ``stem``.png and ``stem``.pdf of :func:`build_plan_figure`; returns both paths."""
    return save_figure(build_plan_figure(table, references), stem)
