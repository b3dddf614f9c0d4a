"""What every scaling figure shares: a colour per mode label, a style per backend, saving.

Colour says the mode label (data, experiment, hybrid{k}), marker and line style (bar shade in
the makespan bars) the backend, in every figure alike, so a reader learns the key once.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from matplotlib.figure import Figure

from distmis.fileio import atomic_path
from distmis.scaling.timings import DEFAULT_BACKEND

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
