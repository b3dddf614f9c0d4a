"""``distmis plan``: one calibration per backend from the measured runs, a prediction per
(backend, mode, k, G), and predicted beside measured where a run exists.

Writes ``<out>/calibration_<backend>.json`` (what was measured) and ``<out>/plan.csv``, one
row per (backend, mode, k, G): ``predicted_makespan_seconds``, ``speedup`` (over the same mode
at G = 1; hybrid over experiment at G = 1), ``efficiency``, ``gpu_hours``,
``measured_makespan_seconds`` and ``relative_error`` (blank where nothing was measured), and
``assumptions`` (JSON: every number the model used and where it came from).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from distmis.fileio import atomic_path
from distmis.plan.calibration import Calibration
from distmis.plan.model import predict, validate
from distmis.plan.runs import read_run

log = logging.getLogger(__name__)

PLAN_CSV = "plan.csv"
PLAN_COLUMNS = (
    "backend",
    "mode",
    "gpus_per_trial",
    "gpus",
    "predicted_makespan_seconds",
    "speedup",
    "efficiency",
    "gpu_hours",
    "measured_makespan_seconds",
    "relative_error",
    "step_seconds_source",
    "assumptions",
)
DEFAULT_GPUS = (1, 2, 4, 8, 16, 32)


def find_runs(results_dir: Path) -> list[Path]:
    """Every ``{backend}/{mode}/{G}gpu`` folder under ``results_dir`` with a summary.json."""
    return sorted(p.parent for p in Path(results_dir).glob("*/*/*gpu/summary.json"))


def _series(mode: str, gpus: Sequence[int], ks: Sequence[int]) -> list[tuple[str, int | None, int]]:
    rows = []
    for g in gpus:
        if mode == "hybrid":
            rows += [("hybrid", k, g) for k in ks if 2 <= k <= g and g % k == 0]
        else:
            rows.append((mode, None, g))
    return rows


def run_plan(
    results_dir: Path,
    out_dir: Path,
    *,
    gpus: Sequence[int] = DEFAULT_GPUS,
    gpus_per_node: int = 4,
    ks: Sequence[int] = (2, 4, 8),
    calibrations: Sequence[Path] = (),
    gpu_step_seconds: float | None = None,
) -> Path:
    """Predict every (backend, mode, k, G) and write ``plan.csv``; returns its path.

    ``calibrations``: calibration.json files to use instead of deriving them from the runs.
    ``gpu_step_seconds`` replaces every calibration's measured step (a GPU projection).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    measured = [read_run(p) for p in find_runs(results_dir)] if Path(results_dir).is_dir() else []
    by_backend: dict[str, Calibration] = {}
    if calibrations:
        for path in calibrations:
            calibration = Calibration.read(Path(path))
            by_backend[calibration.backend] = calibration
    else:
        for backend in sorted({run.backend for run in measured}):
            runs = [run.path for run in measured if run.backend == backend]
            calibration = Calibration.from_runs(runs)
            calibration.write(out_dir / f"calibration_{backend}.json")
            by_backend[backend] = calibration
    if not by_backend:
        raise FileNotFoundError(
            f"no measured runs under {results_dir} and no --calibration given: train first"
        )
    rows = []
    for backend, calibration in sorted(by_backend.items()):
        runs = {
            (r.mode, r.workers_per_trial if r.mode == "hybrid" else None, r.gpus): r
            for r in measured
            if r.backend == backend
        }
        keys = set()
        for mode in ("data", "experiment", "hybrid"):
            keys |= set(_series(mode, gpus, ks))
        keys |= set(runs)  # every measured run is predicted, whatever --gpus says
        for mode, k, g in sorted(keys, key=lambda key: (key[0], key[1] or 0, key[2])):
            run = runs.get((mode, k, g))
            # A measured run is predicted for the epochs its trials really trained (ASHA).
            epochs = run.epochs_per_trial if run is not None and run.scheduler != "none" else None
            prediction = predict(
                calibration,
                mode,
                g,
                k=k,
                gpus_per_node=gpus_per_node,
                gpu_step_seconds=gpu_step_seconds,
                epochs_per_trial=epochs,
            )
            rows.append(
                {
                    "backend": backend,
                    "mode": mode,
                    "gpus_per_trial": prediction.workers_per_trial,
                    "gpus": g,
                    "predicted_makespan_seconds": prediction.makespan_seconds,
                    "speedup": prediction.speedup,
                    "efficiency": prediction.efficiency,
                    "gpu_hours": prediction.gpu_hours,
                    "measured_makespan_seconds": run.makespan_seconds if run else "",
                    "relative_error": validate(prediction, run.makespan_seconds) if run else "",
                    "step_seconds_source": prediction.assumptions.get("step_seconds", {}).get(
                        "source", ""
                    ),
                    "assumptions": json.dumps(prediction.assumptions, sort_keys=True, default=str),
                }
            )
    path = out_dir / PLAN_CSV
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=PLAN_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    log.info("plan of %d rows written to %s", len(rows), path)
    return path
