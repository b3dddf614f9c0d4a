"""The scaling figures: one function per figure, each writing ``<stem>.png`` and ``<stem>.pdf``.

Speedup, efficiency, makespan and time to target come from the scaling table, the
timelines from the runs' trials; the time-to-quality figure is :mod:`~distmis.scaling.quality_plot`'s, colours and
saving :mod:`~distmis.scaling.style`'s.

Figures are built on :class:`matplotlib.figure.Figure` with an Agg canvas, never pyplot:
no global figure state and no display needed, so they render the same on a headless node.
Constrained layout keeps labels and the legends placed outside the axes from being clipped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from distmis.errors import ConfigError
from distmis.scaling.quality import DEFAULT_TOLERANCE
from distmis.scaling.quality_plot import plot_quality
from distmis.scaling.style import (
    FAILED_COLOUR,
    SeriesStyle,
    mode_colour,
    mode_name,
    save_figure,
    series_styles,
)
from distmis.scaling.table import SERIES_COLUMNS, own_efficiency, own_speedup
from distmis.scaling.timeline import busy_fraction, lane_count, timeline_bars
from distmis.scaling.timings import (
    DEFAULT_BACKEND,
    GRID_SEARCH,
    STATUS_FAILED,
    STATUS_STOPPED,
    Run,
)

log = logging.getLogger(__name__)

IDEAL_COLOUR = "0.45"
IDEAL_STYLES = ("--", ":", "-.")


@dataclass(frozen=True)
class Reference:
    """A published speedup drawn for comparison, e.g. the original DistMIS at 32 GPUs."""

    label: str
    mode: str
    gpus: int
    speedup: float

    @classmethod
    def from_mapping(cls, entry: Mapping[str, Any], where: str) -> Reference:
        """One ``report.references`` entry; ``where`` names it in errors."""
        try:
            reference = cls(
                label=str(entry["label"]),
                mode=str(entry["mode"]),
                gpus=int(entry["gpus"]),
                speedup=float(entry["speedup"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"{where} needs label, mode, gpus (integer) and speedup (number): {exc!r}"
            ) from None
        if reference.gpus < 1 or not reference.speedup > 0:
            raise ConfigError(f"{where}: gpus must be >= 1 and speedup > 0, got {entry}")
        return reference


def plot_reference(ax: Axes, reference: Reference) -> None:
    """A published speedup as a black-edged star in its mode's colour (speedup and plan
    figures alike)."""
    ax.plot(
        [reference.gpus],
        [reference.speedup],
        marker="*",
        markersize=15,
        linestyle="none",
        color=mode_colour(reference.mode),
        markeredgecolor="black",
        label=f"reference: {reference.label} ({reference.speedup:g}× at {reference.gpus})",
    )


def parse_references(entries: Sequence[Mapping[str, Any]] | None) -> list[Reference]:
    """``config["report"]["references"]`` as typed references (None or [] gives none)."""
    return [
        Reference.from_mapping(entry, f"report.references[{index}]")
        for index, entry in enumerate(entries or ())
    ]


def _series(table: pd.DataFrame) -> list[tuple[SeriesStyle, pd.DataFrame]]:
    """The table's series (table.SERIES_COLUMNS, one line or bar group each) in key order,
    each with its style and legend label among the table's series, its rows by G."""
    groups = [(key, rows.sort_values("gpus")) for key, rows in table.groupby(SERIES_COLUMNS)]
    styles = series_styles((key for key, _ in groups), _unit(table))
    return [(styles[key], rows) for key, rows in groups]


def _series_label(style: SeriesStyle, base_gpus: int, table: pd.DataFrame) -> str:
    """The series' label, and its base where that is not one GPU."""
    if base_gpus != 1:
        return f"{style.label}, vs {base_gpus} {_unit(table, base_gpus)}"
    return style.label


def _unit(table: pd.DataFrame, count: int = 2) -> str:
    """What G counts in this table: GPUs, or the CPU workers that stood in for them."""
    devices = set(table["device"])
    noun = "CPU worker" if devices == {"cpu"} else "GPU"
    return noun if count == 1 else noun + "s"


def _g_label(table: pd.DataFrame, log_scale: bool) -> str:
    if set(table["device"]) == {"cpu"}:
        label = "G, number of CPU workers standing in for GPUs"
    else:
        label = "G, number of GPUs"
    return label + (" (log₂ scale)" if log_scale else "")


def log2_axis(axis: Any, ticks: Sequence[float]) -> None:
    """Log2 scale on ``axis`` with exactly ``ticks`` marked, written as plain numbers."""
    axis.set_major_locator(FixedLocator(sorted(set(ticks))))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_locator(NullLocator())


def log2_speedup_axis(ax: Axes, values: Sequence[float]) -> None:
    """Log2 y axis ticked at the powers of two that ``values`` span, a quarter doubling of
    margin each side."""
    low = 2 ** math.floor(math.log2(min(values)))
    high = 2 ** math.ceil(math.log2(max(values)))
    ax.set_yscale("log", base=2)
    log2_axis(ax.yaxis, [2.0**k for k in range(round(math.log2(low)), round(math.log2(high)) + 1)])
    ax.set_ylim(low / 2**0.25, high * 2**0.25)


def _g_axis(ax: Axes, counts: Sequence[int], table: pd.DataFrame) -> None:
    """A log2 G axis whose ticks are exactly the G values present."""
    ticks = sorted(set(counts))
    ax.set_xscale("log", base=2)
    log2_axis(ax.xaxis, ticks)
    # Half a doubling of margin each side keeps the end markers off the frame.
    ax.set_xlim(ticks[0] / 2**0.5, ticks[-1] * 2**0.5)
    ax.set_xlabel(_g_label(table, log_scale=True))


def _mark_resumed(ax: Axes, xs: Sequence[float], ys: Sequence[float], colour: str) -> bool:
    for x, y in zip(xs, ys, strict=True):
        ax.plot([x], [y], marker="o", markersize=14, markerfacecolor="none", color=colour)
        ax.annotate("resumed", (x, y), textcoords="offset points", xytext=(8, -14), fontsize=8)
    return bool(xs)


def _resumed_handle() -> Line2D:
    return Line2D(
        [],
        [],
        marker="o",
        markersize=12,
        markerfacecolor="none",
        color="0.3",
        linestyle="none",
        label="resumed run (makespan spans the interruption)",
    )


def _legend(ax: Axes, loc: str, resumed: Artist | None) -> None:
    """The legend of the labelled artists, plus the key to resumed runs when one is drawn.

    ``loc`` "below" puts it under the axes (bar charts: inside it would hide the labels of
    the tallest bars)."""
    handles, _ = ax.get_legend_handles_labels()
    if resumed is not None:
        handles.append(resumed)
    if loc == "below":
        ax.figure.legend(
            handles=handles, loc="outside lower center", ncols=min(3, len(handles)), fontsize=8
        )
        return
    ax.legend(handles=handles, loc=loc, fontsize=8)


def _new_figure(width: float, height: float) -> tuple[Figure, Axes]:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _plot_series(ax, table: pd.DataFrame, values: pd.Series) -> bool:
    """One line per series of ``values`` against G; True if a resumed run is marked."""
    resumed_seen = False
    for style, rows in _series(table):
        base = int(rows["base_gpus"].iloc[0])
        ax.plot(
            rows["gpus"],
            values[rows.index],
            **style.line,
            label=_series_label(style, base, table),
        )
        resumed = rows[rows["resumed"]]
        resumed_seen |= _mark_resumed(
            ax, list(resumed["gpus"]), list(values[resumed.index]), style.colour
        )
    return resumed_seen


def plot_speedup(
    table: pd.DataFrame, stem: Path, references: Sequence[Reference] = ()
) -> list[Path]:
    """The speedup figure of ``table`` (see :func:`speedup_figure`)."""
    return save_figure(speedup_figure(table, references), stem)


def speedup_figure(table: pd.DataFrame, references: Sequence[Reference] = ()) -> Figure:
    """Speedup vs G per series, the ideal linear line, and reference points."""
    figure, ax = _new_figure(7.5, 5.0)
    speedup = own_speedup(table)
    resumed_seen = _plot_series(ax, table, speedup)
    counts = [*table["gpus"], *(r.gpus for r in references)]
    for index, base in enumerate(sorted(table["base_gpus"].unique())):
        # On log-log axes the ideal speedup G / base is a straight line: two points suffice.
        xs = [base, max(counts)]
        label = "ideal (linear)" if base == 1 else f"ideal from {base} {_unit(table)}"
        style = IDEAL_STYLES[index % len(IDEAL_STYLES)]  # one per base, told apart
        ax.plot(xs, [g / base for g in xs], color=IDEAL_COLOUR, linestyle=style, label=label)
    for reference in references:
        plot_reference(ax, reference)
    _g_axis(ax, counts, table)
    # Log2 on both axes: speedups from 0.5× to 32× stay readable together, and the ideal
    # is the diagonal. Ticks at the powers of two the data spans.
    values = [
        *speedup.dropna(),
        *(r.speedup for r in references),
        *(max(counts) / b for b in table["base_gpus"]),
    ]
    log2_speedup_axis(ax, values)
    ax.set_ylabel("speedup (×, log₂ scale) = makespan at base G / makespan at G")
    ax.grid(True, alpha=0.3)
    ax.set_title("Speedup of the whole hyperparameter search")
    _legend(ax, "upper left", _resumed_handle() if resumed_seen else None)
    return figure


def plot_efficiency(table: pd.DataFrame, stem: Path) -> list[Path]:
    """The efficiency figure of ``table`` (see :func:`efficiency_figure`)."""
    return save_figure(efficiency_figure(table), stem)


def efficiency_figure(table: pd.DataFrame) -> Figure:
    """Parallel efficiency (speedup per added GPU) vs G; 1 is linear scaling."""
    figure, ax = _new_figure(7.5, 5.0)
    efficiency = own_efficiency(table)
    resumed_seen = _plot_series(ax, table, efficiency)
    ax.axhline(1.0, color=IDEAL_COLOUR, linestyle="--", label="ideal (linear scaling)")
    _g_axis(ax, list(table["gpus"]), table)
    ax.set_ylabel("parallel efficiency = speedup / (G / base G)")
    top = max(1.15, float(efficiency.max()) * 1.1) if efficiency.notna().any() else 1.15
    ax.set_ylim(0, top)
    ax.grid(True, alpha=0.3)
    ax.set_title("Parallel efficiency")
    _legend(ax, "lower left", _resumed_handle() if resumed_seen else None)
    return figure


def plot_makespan(table: pd.DataFrame, stem: Path) -> list[Path]:
    """The makespan figure of ``table`` (see :func:`makespan_figure`)."""
    return save_figure(makespan_figure(table), stem)


def makespan_figure(table: pd.DataFrame) -> Figure:
    """Grouped bars: makespan per G, one bar per series, best val Dice on top."""
    series = _series(table)
    counts = sorted(table["gpus"].unique())
    figure, ax = _new_figure(max(6.0, 1.6 * len(counts) * max(len(series), 1) / 2 + 3), 5.0)
    width = 0.8 / len(series)
    resumed_seen = False
    for index, (style, rows) in enumerate(series):
        offset = (index - (len(series) - 1) / 2) * width
        positions = [counts.index(g) + offset for g in rows["gpus"]]
        backend = rows["backend"].iloc[0]
        bars = ax.bar(
            positions,
            rows["makespan_seconds"],
            width=width * 0.95,
            # Fill only: the black edge and hatch stay solid on a lighter bar.
            color=to_rgba(style.colour, style.shade),
            # The search's hatch, and the resumed one over it.
            hatch=[_bar_hatch(style.hatch, r) for r in rows["resumed"]],
            edgecolor="black",
            # The backend's line style on the edge too, so the shade is not the only cue
            # (greyscale print).
            linestyle=style.linestyle,
            linewidth=0.5 if backend == DEFAULT_BACKEND else 1.0,
            label=style.label,
        )
        resumed_seen |= bool(rows["resumed"].any())
        # The best model's Dice beside each time: faster only counts if it is as good.
        labels = [
            f"{m:.0f} s\nDice {d:.2f}" if not math.isnan(d) else f"{m:.0f} s\nno Dice"
            for m, d in zip(rows["makespan_seconds"], rows["best_val_dice"], strict=True)
        ]
        labels = [
            text + (f"\n{f} failed" if f else "") + (f"\n{s} stopped" if s else "")
            for text, f, s in zip(
                labels, rows["trials_failed"], rows["trials_stopped"], strict=True
            )
        ]
        ax.bar_label(bars, labels=labels, padding=2, fontsize=7)
    ax.set_xticks(range(len(counts)), [str(g) for g in counts])
    ax.set_xlabel(_g_label(table, log_scale=False))
    ax.set_ylabel("makespan (s), whole search incl. start-up")
    # Head room for the two- or three-line labels above the tallest bar.
    ax.set_ylim(0, float(table["makespan_seconds"].max()) * 1.3)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title("Time to train every configuration (best validation Dice above each bar)")
    resumed = Patch(facecolor="white", edgecolor="black", hatch="//", label="resumed run")
    _legend(ax, "below", resumed if resumed_seen else None)
    return figure


def _bar_hatch(search_hatch: str | None, resumed: bool) -> str | None:
    return ((search_hatch or "") + ("//" if resumed else "")) or None


def time_to_target_figure(table: pd.DataFrame) -> Figure:
    """Seconds until each run's best validation Dice reached the study's common target
    (``time_to_target_seconds``), against G, one line per series.

    A run that never reached the target has no point (never a made-up time); the legend
    says which G of a series did not reach it, and a series none of whose runs did is still
    listed, "never reached the target". The target is the table's ``quality_target_dice``.
    """
    # Wider than the speedup figure: its legend labels also say where a series fell short.
    figure, ax = _new_figure(10.0, 5.5)
    seconds = table["time_to_target_seconds"]
    targets = table["quality_target_dice"].dropna().unique()
    resumed_seen = False
    for style, rows in _series(table):
        label = style.label
        missed = [int(g) for g in rows.loc[seconds[rows.index].isna(), "gpus"]]
        if len(targets) and len(missed) == len(rows):
            label += ": never reached the target"
        elif len(targets) and missed:
            label += f": not reached at G = {', '.join(map(str, missed))}"
        # NaN leaves a gap: a run that never got there is not joined to its neighbours.
        ax.plot(rows["gpus"], seconds[rows.index], **style.line, label=label)
        resumed = rows[rows["resumed"] & seconds[rows.index].notna()]
        resumed_seen |= _mark_resumed(
            ax, list(resumed["gpus"]), list(seconds[resumed.index]), style.colour
        )
    _g_axis(ax, list(table["gpus"]), table)
    ax.set_ylim(0, float(seconds.max()) * 1.15 if seconds.notna().any() else 1.0)
    ax.set_ylabel("time to target (s since the run started)")
    ax.grid(True, alpha=0.3)
    if len(targets):
        title = (
            "Time to a common quality target: "
            f"best validation Dice so far ≥ {float(targets[0]):.4g}"
        )
    else:
        title = "Time to target: no target (no run has a validation, or the table predates it)"
    ax.set_title(title, fontsize=10)
    handles, _ = ax.get_legend_handles_labels()
    if resumed_seen:
        handles.append(_resumed_handle())
    figure.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8)
    return figure


def plot_time_to_target(table: pd.DataFrame, stem: Path) -> list[Path]:
    """The time-to-target figure of ``table`` (see :func:`time_to_target_figure`)."""
    return save_figure(time_to_target_figure(table), stem)


def plot_timeline(run: Run, stem: Path) -> list[Path]:
    """Gantt chart of one run: each trial a bar on the lane (GPU) it held, from start to end."""
    bars = timeline_bars(run)
    lanes = lane_count(run, bars)
    makespan = run.summary.makespan_seconds
    # Thinner lanes past 16 keep a 32-GPU run on one page.
    figure, ax = _new_figure(9.0, 1.9 + (0.45 if lanes <= 16 else 0.3) * lanes)
    colour = mode_colour(run.summary.mode_label)
    # Bars are numbered by trials.csv row so a straggler can be looked up there.
    row_of = {trial.trial_id: row for row, trial in enumerate(run.trials, start=1)}
    for bar in bars:
        ax.barh(
            bar.lane,
            # A trial that failed at once still gets a visible sliver.
            max(bar.width, makespan * 0.003),
            left=bar.left,
            height=0.7,
            **_bar_style(bar.status, colour),
            edgecolor="black",
            linewidth=0.5,
        )
        if bar.width > makespan * 0.04:
            ax.text(
                bar.left + bar.width / 2,
                bar.lane,
                f"#{row_of[bar.trial_id]}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if bar.ok else "black",
                # On a hatched bar the number needs a plain patch to stay legible.
                bbox=None if bar.ok else {"facecolor": "white", "edgecolor": "none", "pad": 1},
            )
    ax.axvline(0.0, color="black", linestyle=":", linewidth=1)
    ax.axvline(makespan, color="black", linestyle=":", linewidth=1)
    noun = "CPU worker" if run.summary.uses_gpus is False else "GPU"
    ax.set_yticks(range(lanes), [f"{noun} {lane}" for lane in range(lanes)])
    ax.set_ylim(lanes - 0.5, -0.5)  # lane 0 on top
    ax.set_xlim(min(0.0, *(b.left for b in bars)) - makespan * 0.02, makespan * 1.02)
    ax.set_xlabel("time since the run started (s)")
    ax.set_ylabel(f"lane ({noun})")
    ax.grid(True, axis="x", alpha=0.3)
    # The backend always shows: a timeline stands alone in the report, with no legend
    # of series to tell a tensorflow run from a torch one.
    search = "" if run.summary.search == GRID_SEARCH else f", {run.summary.search} search"
    title = (
        f"{run.summary.backend}, {mode_name(run.summary.mode_label, noun + 's')}{search}, "
        f"G = {run.gpus}:\n"  # two lines: a hybrid run's name alone fills most of one
        f"makespan {makespan:.1f} s, {noun}s busy {busy_fraction(run, bars):.0%} of G × makespan"
    )
    if run.summary.resumed:
        title += " (resumed: spans the interruption)"
    ax.set_title(title, fontsize=10)
    handles = [
        Patch(facecolor=colour, edgecolor="black", label="trial (ok), #k = trials.csv row k"),
        Patch(**_bar_style(STATUS_FAILED, colour), edgecolor="black", label="failed trial"),
    ]
    if any(bar.stopped for bar in bars):
        handles.append(
            Patch(
                **_bar_style(STATUS_STOPPED, colour),
                edgecolor="black",
                label="stopped early (ASHA)",
            )
        )
    handles.append(Line2D([], [], color="black", linestyle=":", label="makespan start / end"))
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8)
    return save_figure(figure, stem)


def _bar_style(status: str, colour: str) -> dict[str, Any]:
    """Fill and hatch of a timeline bar: the mode's colour when ok, paler and dotted when
    stopped early, red and crossed when failed."""
    if status == STATUS_FAILED:
        return {"facecolor": FAILED_COLOUR, "hatch": "xx"}
    if status == STATUS_STOPPED:
        return {"facecolor": to_rgba(colour, 0.45), "hatch": ".."}
    return {"facecolor": colour, "hatch": None}


def timeline_stem(run: Run, *, with_search: bool = False) -> str:
    """``timeline_{backend}_{mode}_{G}gpu``: unique per run of one search, as
    rules/scaling.smk names it; the mode is the label (hybrid runs: ``hybrid{k}``), as in the
    run's folder. ``with_search`` (for a run that shares the rest with another of the study)
    adds ``_{search}``, ``×`` written ``x``, and ``_asha`` where ASHA stopped configurations:
    ``..._2gpu_grid``, ``..._2gpu_grid_asha``, ``..._2gpu_randomx8``."""
    summary = run.summary
    stem = f"timeline_{summary.backend}_{summary.mode_label}_{run.gpus}gpu"
    if not with_search:
        return stem
    scheduler = "" if summary.scheduler == "none" else f"_{summary.scheduler}"
    return f"{stem}_{summary.search.replace('×', 'x')}{scheduler}"


def timeline_stems(runs: Sequence[Run]) -> list[str]:
    """The timeline stem of each of ``runs``: with the search (and scheduler) only where two
    runs would share a name (the workflow's runs, all of one search, keep the names its rule
    declares). Two runs that still share one are a ValueError: one figure would overwrite the
    other and hide its run."""
    plain = [timeline_stem(run) for run in runs]
    stems = [
        timeline_stem(run, with_search=plain.count(stem) > 1)
        for run, stem in zip(runs, plain, strict=True)
    ]
    shared = sorted({stem for stem in stems if stems.count(stem) > 1})
    if shared:
        raise ValueError(f"runs would share a timeline, hiding one: {shared}")
    return stems


def plot_all(
    table: pd.DataFrame,
    runs: Sequence[Run],
    out_dir: Path,
    references: Sequence[Reference] = (),
    quality_tolerance: float = DEFAULT_TOLERANCE,
) -> dict[str, list[Path]]:
    """Every figure into ``out_dir``, by figure name: speedup, efficiency, makespan, quality
    (time to quality, within ``quality_tolerance`` Dice of each run's best), time_to_target
    (to the table's common ``quality_target_dice``), timelines."""
    out_dir = Path(out_dir)
    written = {
        "speedup": plot_speedup(table, out_dir / "speedup", references),
        "efficiency": plot_efficiency(table, out_dir / "efficiency"),
        "makespan": plot_makespan(table, out_dir / "makespan"),
        "quality": plot_quality(runs, out_dir / "quality", quality_tolerance),
        "time_to_target": plot_time_to_target(table, out_dir / "time_to_target"),
    }
    for run, stem in zip(runs, timeline_stems(runs), strict=True):
        written[stem] = plot_timeline(run, out_dir / stem)
    return written
