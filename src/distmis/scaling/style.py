"""What every scaling figure shares: a colour per mode label, a style per backend, a marker
fill per search, the legend label of each series, saving.

Colour says the mode label (data, experiment, hybrid{k}), marker and line style (bar shade in
the makespan bars) the backend, marker fill (bar hatch) the search, in every figure alike, so
a reader learns the key once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure

from distmis.fileio import atomic_path
from distmis.scaling.timings import DEFAULT_BACKEND, GRID_SEARCH, SERIES_COLUMNS

log = logging.getLogger(__name__)

PNG_DPI = 150
# Each hybrid k has its own colour, fixed per k so a k keeps it whichever others a config
# asks for; red stays free for failed trials.
MODE_COLOURS = {"data": "tab:blue", "experiment": "tab:orange"}
HYBRID_COLOURS = {2: "tab:green", 4: "tab:purple", 8: "tab:brown", 16: "tab:pink"}
OTHER_COLOURS = ("tab:olive", "tab:cyan", "tab:gray")
HYBRID_LABEL = re.compile(r"^hybrid(\d+)$")
BACKEND_STYLES = {DEFAULT_BACKEND: ("o", "-"), "torch": ("s", "--")}
BACKEND_SHADES = {DEFAULT_BACKEND: 1.0, "torch": 0.5}  # bar fill opacity
FAILED_COLOUR = "tab:red"
# Per search of the study (each search and scheduler), in sorted order (grid sorts first, no
# early stopping before ASHA): the marker fill of its lines and the hatch of its bars, so two
# searches of one mode and backend are told apart off the legend.
SEARCH_FILLS = ("full", "none", "left", "bottom", "right", "top")
SEARCH_HATCHES = (None, "..", "\\\\", "oo", "++", "**")
# How each series column other than the mode reads in a legend, after the mode's name, and the
# value left unsaid when it is the study's only one: a grid-only TensorFlow study's legends say
# just the mode, as they did before series had a backend or a search. A column without an entry
# reads "{column} {value}" and shows only when the study has more than one.
SERIES_WORDS = {
    "backend": ("{}", DEFAULT_BACKEND),
    "search": ("{} search", GRID_SEARCH),
    "scheduler": ("ASHA", "none"),
}
# Columns whose default is never said, even beside another value: "(ASHA)" against nothing
# reads as with and without early stopping.
UNSAID_DEFAULTS = {"scheduler"}

SeriesKey = tuple[str, ...]  # one value per SERIES_COLUMNS
SEARCH_INDEX = SERIES_COLUMNS.index("search")
SCHEDULER_INDEX = SERIES_COLUMNS.index("scheduler")


@dataclass(frozen=True)
class SeriesStyle:
    """How one series is drawn and named in a figure of a given study."""

    label: str
    colour: str  # the mode label
    marker: str  # the backend
    linestyle: str  # the backend
    shade: float  # bar fill opacity: the backend
    fillstyle: str  # marker fill: the search
    hatch: str | None  # bar hatch: the search

    @property
    def line(self) -> dict[str, str]:
        """Keyword arguments of ``Axes.plot`` for this series."""
        return {
            "marker": self.marker,
            "linestyle": self.linestyle,
            "color": self.colour,
            "fillstyle": self.fillstyle,
        }


def mode_colour(mode: str) -> str:
    """The colour of a mode label (data, experiment, hybrid{k}) in every figure."""
    if mode in MODE_COLOURS:
        return MODE_COLOURS[mode]
    hybrid = HYBRID_LABEL.match(mode)
    if hybrid:
        k = int(hybrid.group(1))
        return HYBRID_COLOURS.get(k, OTHER_COLOURS[k % len(OTHER_COLOURS)])
    return OTHER_COLOURS[sum(map(ord, mode)) % len(OTHER_COLOURS)]


def mode_name(mode: str, noun: str = "GPUs") -> str:
    """A mode label in words: ``hybrid2`` is "hybrid parallelism (2 GPUs per trial)"."""
    hybrid = HYBRID_LABEL.match(mode)
    if hybrid:
        return f"hybrid parallelism ({hybrid.group(1)} {noun} per trial)"
    return f"{mode} parallelism"


def series_styles(keys: Iterable[SeriesKey], noun: str = "GPUs") -> dict[SeriesKey, SeriesStyle]:
    """The style and legend label of each series of a study (``keys``: every series a figure
    draws, one value per :data:`~distmis.scaling.timings.SERIES_COLUMNS`).

    A label is the mode in words, then in parentheses each other column whose value must be
    said (:data:`SERIES_WORDS`): the study has more than one value of it, or its one value is
    not the default. Two series never share a label: one would hide the other in the legend,
    so that is a ValueError.
    """
    keys = sorted(set(keys))
    values = {column: sorted({key[i] for key in keys}) for i, column in enumerate(SERIES_COLUMNS)}
    # The marker fill and bar hatch tell the searches apart: each (search, scheduler).
    variants = sorted(
        {(key[SEARCH_INDEX], key[SCHEDULER_INDEX]) for key in keys},
        key=lambda variant: (variant[0], variant[1] != "none", variant[1]),
    )
    styles = {}
    for key in keys:
        series = dict(zip(SERIES_COLUMNS, key, strict=True))
        said = []
        for column, value in series.items():
            if column == "mode":
                continue
            words, default = SERIES_WORDS.get(column, (f"{column} {{}}", None))
            varied = len(values[column]) > 1 and column not in UNSAID_DEFAULTS
            if varied or (default is not None and value != default):
                said.append(words.format(value))
        search = variants.index((series["search"], series["scheduler"]))
        marker, linestyle = BACKEND_STYLES.get(series["backend"], ("^", ":"))
        styles[key] = SeriesStyle(
            label=mode_name(series["mode"], noun) + (f" ({', '.join(said)})" if said else ""),
            colour=mode_colour(series["mode"]),
            marker=marker,
            linestyle=linestyle,
            shade=BACKEND_SHADES.get(series["backend"], 0.75),
            fillstyle=SEARCH_FILLS[search % len(SEARCH_FILLS)],
            hatch=SEARCH_HATCHES[search % len(SEARCH_HATCHES)],
        )
    labels = [style.label for style in styles.values()]
    shared = sorted({label for label in labels if labels.count(label) > 1})
    if shared:
        raise ValueError(f"series would share a legend label, hiding one: {shared}")
    return styles


def save_figure(figure: Figure, stem: Path) -> list[Path]:
    """Write ``stem``.png and .pdf whole; PDFs without a creation date, so reruns match."""
    paths = []
    for suffix, kwargs in (
        (".png", {"dpi": PNG_DPI}),
        (".pdf", {"metadata": {"CreationDate": None}}),
    ):
        path = Path(stem).with_suffix(suffix)
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format=suffix[1:], **kwargs)
        paths.append(path)
    log.info("wrote %s", ", ".join(map(str, paths)))
    return paths
