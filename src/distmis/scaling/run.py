"""The scaling analysis in one call: timings → ``scaling.csv`` and every figure."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from distmis.scaling.plot import parse_references, plot_all
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
) -> dict[str, Any]:
    """Write ``out_dir``/scaling.csv and the figures; return the paths by name.

    ``results_dir`` (e.g. ``results/train``) is searched for ``{backend}/{mode}/{G}gpu``
    runs unless ``run_dirs`` lists them.
    ``references`` are ``config["report"]["references"]`` entries (label, mode, gpus,
    speedup). The result maps ``"scaling_csv"`` to the table's path and each figure name
    (``speedup``, ``efficiency``, ``makespan``, ``timeline_{backend}_{mode}_{G}gpu``) to its PNG
    and PDF paths.
    """
    parsed = parse_references(references)
    runs = load_runs(results_dir, run_dirs)
    table = scaling_table(runs)
    out_dir = Path(out_dir)
    written: dict[str, Any] = {"scaling_csv": write_scaling_csv(table, out_dir / SCALING_CSV)}
    written.update(plot_all(table, runs, out_dir, parsed))
    log.info("scaling analysis of %d runs written to %s", len(runs), out_dir)
    return written
