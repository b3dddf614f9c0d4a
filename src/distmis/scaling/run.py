"""The scaling analysis in one call: timings → ``scaling.csv`` and every figure."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from distmis.scaling.plot import parse_references, plot_all
from distmis.scaling.quality import (
    DEFAULT_TARGET,
    DEFAULT_TOLERANCE,
    QualityTarget,
    check_tolerance,
)
from distmis.scaling.table import scaling_table, write_scaling_csv
from distmis.scaling.timings import load_runs

log = logging.getLogger(__name__)

SCALING_CSV = "scaling.csv"


def run_scaling(
    results_dir: Path | None,
    out_dir: Path,
    references: Sequence[Mapping[str, Any]] | None = None,
    *,
    run_dirs: Sequence[Path] = (),
    quality_tolerance: float = DEFAULT_TOLERANCE,
    quality_target: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Write ``out_dir``/scaling.csv and the figures; return the paths by name.

    ``results_dir`` (e.g. ``results/train``) is searched for ``{backend}/{mode}/{G}gpu``
    runs (mode folders ``data``, ``experiment``, ``hybrid{k}``) unless ``run_dirs`` lists them.
    ``references`` are ``config["report"]["references"]`` entries (label, mode, gpus,
    speedup); ``quality_tolerance`` is ``config["report"]["quality_tolerance"]``, the Dice a
    run may trail its final best and count as having reached it (``time_to_best_seconds``);
    ``quality_target`` is ``config["report"]["quality_target"]`` (None: its default, 0.95 ×
    the best validation Dice of all the runs), the common bar of ``time_to_target_seconds``.
    The result maps ``"scaling_csv"`` to the table's path and each figure name
    (``speedup``, ``efficiency``, ``makespan``, ``quality``, ``time_to_target``,
    ``timeline_{backend}_{mode}_{G}gpu``, ending ``_{search}`` and ``_asha`` where two runs
    would otherwise share the name) to its PNG and PDF paths.
    """
    parsed = parse_references(references)
    quality_tolerance = check_tolerance(quality_tolerance)
    target = DEFAULT_TARGET if quality_target is None else QualityTarget.from_config(quality_target)
    runs = load_runs(results_dir, run_dirs)
    table = scaling_table(runs, quality_tolerance, target)
    out_dir = Path(out_dir)
    written: dict[str, Any] = {"scaling_csv": write_scaling_csv(table, out_dir / SCALING_CSV)}
    written.update(plot_all(table, runs, out_dir, parsed, quality_tolerance))
    log.info("scaling analysis of %d runs written to %s", len(runs), out_dir)
    return written
