"""``distmis plan``: one calibration per backend from the measured runs, a prediction per
(backend, study, mode, k, G), and predicted beside measured where a run exists.

Writes ``<out>/calibration_<backend>.json`` (:mod:`distmis.plan.calibration`) and
``<out>/plan.csv``, one row per (backend, study, mode, k, G):

- ``study``: ``measured`` (the measured runs' grid and sizes on their machine) or
  ``projected`` (a :class:`Projection`: another grid and size on the device whose step it
  gives, e.g. the paper's grid on an H200);
- ``predicted_makespan_seconds``, ``speedup`` (over the same mode at G = 1; hybrid over
  experiment at G = 1), ``efficiency``, ``gpu_hours``;
- ``measured_makespan_seconds``, ``measured_speedup`` (the measured makespans' ratio, where
  both were measured), ``relative_error`` = (predicted - measured) / measured with the
  calibration from every run of the backend, and ``loo_relative_error`` with the calibration
  from every run but this one (a true out-of-sample check; blank when the others cannot make
  a calibration); blank where nothing was measured;
- ``step_seconds`` and its ``step_seconds_source``, and ``assumptions`` (JSON: every number the
  model used, with its source).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from distmis import modes
from distmis.errors import DistmisError
from distmis.fileio import atomic_path
from distmis.plan.calibration import Calibration
from distmis.plan.measure import RunCalibration, measure
from distmis.plan.model import Prediction, Study, predict, validate
from distmis.plan.runs import MeasuredRun, read_run
from distmis.run_folder import SUMMARY_FILE

log = logging.getLogger(__name__)

PLAN_CSV = "plan.csv"
PLAN_COLUMNS = (
    "backend",
    "study",
    "mode",
    "gpus_per_trial",
    "gpus",
    "predicted_makespan_seconds",
    "speedup",
    "efficiency",
    "gpu_hours",
    "measured_makespan_seconds",
    "measured_speedup",
    "relative_error",
    "loo_relative_error",
    "step_seconds",
    "step_seconds_source",
    "assumptions",
)
DEFAULT_GPUS = (1, 2, 4, 8, 16, 32)
# The accuracy the planner is held to: a measured run's predicted makespan within this
# fraction of what was measured (tests/test_workflow.py asserts it on a fresh demo run).
TOLERANCE = 0.15


@dataclass(frozen=True)
class Projection:
    """The study to project: the grid and sizes, and per backend the training step on the
    target device (a backend without one is not projected). Sizes left None are the
    measured runs'."""

    step_seconds: Mapping[str, float]
    grid_size: int | None = None
    epochs: int | None = None
    train_volumes: int | None = None
    val_volumes: int | None = None

    def study(self, calibration: Calibration, asha: tuple[int, int] | None) -> Study | None:
        step = self.step_seconds.get(calibration.backend)
        if step is None:
            return None
        measured = Study.measured(calibration)
        return _with_asha(
            Study(
                label="projected",
                grid_size=self.grid_size or measured.grid_size,
                epochs=self.epochs or measured.epochs,
                train_volumes=self.train_volumes or measured.train_volumes,
                val_volumes=self.val_volumes or measured.val_volumes,
                batch_size_per_replica=measured.batch_size_per_replica,
                step_seconds=step,
            ),
            asha,
        )


def _with_asha(study: Study, asha: tuple[int, int] | None) -> Study:
    if asha is None:
        return study
    grace, factor = asha
    return replace(study, scheduler="asha", asha_grace_period=grace, asha_reduction_factor=factor)


def find_runs(results_dir: Path) -> list[Path]:
    """Every ``{backend}/{mode}/{G}gpu`` folder under ``results_dir`` with a summary.json,
    links followed, relative to the working folder where it lies within it: the paths the
    calibration records."""
    here = Path.cwd().resolve()
    runs = []
    for summary in Path(results_dir).glob(f"*/*/*gpu/{SUMMARY_FILE}"):
        run = summary.parent.resolve()
        runs.append(run.relative_to(here) if run.is_relative_to(here) else run)
    return sorted(runs)


def _keys(gpus: Sequence[int], ks: Sequence[int]) -> list[tuple[str, int | None, int]]:
    rows: list[tuple[str, int | None, int]] = []
    for g in gpus:
        for mode in modes.MODES.values():
            for k in ks if mode.takes_k else [None]:
                if g in mode.gpu_counts([g], k):
                    rows.append((mode.name, k, g))
    return rows


def _run_key(run: MeasuredRun) -> tuple[str, int | None, int]:
    k = run.workers_per_trial if modes.get(run.mode).takes_k else None
    return (run.mode, k, run.gpus)


def run_plan(
    results_dir: Path | None,
    out_dir: Path,
    *,
    gpus: Sequence[int] = DEFAULT_GPUS,
    gpus_per_node: int = 4,
    ks: Sequence[int] = (2, 4, 8),
    calibrations: Sequence[Path] = (),
    run_dirs: Sequence[Path] | None = None,
    projection: Projection | None = None,
    asha: tuple[int, int] | None = None,
    inter_node_bandwidth: float | None = None,
) -> Path:
    """Predict every (backend, study, mode, k, G) and write ``plan.csv``; returns its path.

    ``calibrations``: calibration files to use instead of deriving them from the runs (no
    leave-one-out check then). ``run_dirs``: exactly these runs instead of every run under
    ``results_dir`` (rule plan: the runs its config asks for). ``asha``: (grace period, reduction factor) when the studies
    run ASHA; a measured ASHA run is predicted for the epochs its trials really trained.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if run_dirs is None:
        run_dirs = find_runs(results_dir) if results_dir and Path(results_dir).is_dir() else []
    measured = [read_run(p) for p in run_dirs]
    # Each run's own calibration, measured once: the backend's and every leave-one-out merge it.
    measured_parts = {} if calibrations else {r.path: measure(r) for r in measured}
    by_backend: dict[str, Calibration] = {}
    for path in calibrations:
        calibration = Calibration.read(Path(path))
        by_backend[calibration.backend] = calibration
    if not calibrations:
        for backend in sorted({run.backend for run in measured}):
            runs = [measured_parts[r.path] for r in measured if r.backend == backend]
            by_backend[backend] = Calibration.merge(runs)
            by_backend[backend].write(out_dir / f"calibration_{backend}.json")
    if not by_backend:
        raise DistmisError(
            f"no measured runs under {results_dir} and no --calibration given: train first "
            "(snakemake, or distmis train), or pass --calibration calibration_<backend>.json"
        )
    options = {"gpus_per_node": gpus_per_node, "inter_node_bandwidth": inter_node_bandwidth}
    rows = []
    for backend, calibration in sorted(by_backend.items()):
        runs = {_run_key(r): r for r in measured if r.backend == backend}
        measured_study = _with_asha(Study.measured(calibration), asha)
        keys = sorted(set(_keys(gpus, ks)) | set(runs), key=lambda x: (x[0], x[1] or 0, x[2]))
        for mode, k, g in keys:
            run = runs.get((mode, k, g))
            # A measured run is predicted for the epochs its trials really trained (ASHA).
            epochs = run.epochs_per_trial if run is not None and run.scheduler != "none" else None
            prediction = predict(
                calibration, mode, g, k, study=measured_study, epochs_per_trial=epochs, **options
            )
            loo = None
            if run is not None and not calibrations:
                others = [measured_parts[r.path] for r in runs.values() if r.path != run.path]
                loo = _leave_one_out(run, others, mode, k, epochs, options)
            rows.append(_row(backend, "measured", prediction, run, runs, loo))
        projected = projection.study(calibration, asha) if projection else None
        if projected is not None:
            for mode, k, g in sorted(set(_keys(gpus, ks)), key=lambda x: (x[0], x[1] or 0, x[2])):
                prediction = predict(calibration, mode, g, k, study=projected, **options)
                rows.append(_row(backend, "projected", prediction, None, {}, None))
    path = out_dir / PLAN_CSV
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=PLAN_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    log.info("plan of %d rows written to %s", len(rows), path)
    return path


def _leave_one_out(
    run: MeasuredRun,
    others: Sequence[RunCalibration],
    mode: str,
    k: int | None,
    epochs: Sequence[int] | None,
    options: Mapping[str, Any],
) -> float | None:
    """The relative error of ``run``'s prediction from a calibration of the ``others``."""
    try:
        calibration = Calibration.merge(others)
    except ValueError as exc:  # no one-worker run left, or nothing left at all
        log.info("no leave-one-out check for %s: %s", run.path, exc)
        return None
    prediction = predict(calibration, mode, run.gpus, k, epochs_per_trial=epochs, **options)
    return validate(prediction, run.makespan_seconds)


def _row(
    backend: str,
    study: str,
    prediction: Prediction,
    run: MeasuredRun | None,
    runs: Mapping[tuple[str, int | None, int], MeasuredRun],
    loo: float | None,
) -> dict[str, Any]:
    step = prediction.assumptions.get("step_seconds", {})
    baseline = runs.get((modes.get(prediction.mode).baseline, None, 1))
    measured_speedup = ""
    if run is not None and baseline is not None:
        measured_speedup = baseline.makespan_seconds / run.makespan_seconds
    return {
        "backend": backend,
        "study": study,
        "mode": prediction.mode,
        "gpus_per_trial": prediction.workers_per_trial,
        "gpus": prediction.gpus,
        "predicted_makespan_seconds": prediction.makespan_seconds,
        "speedup": prediction.speedup,
        "efficiency": prediction.efficiency,
        "gpu_hours": prediction.gpu_hours,
        "measured_makespan_seconds": run.makespan_seconds if run else "",
        "measured_speedup": measured_speedup,
        "relative_error": validate(prediction, run.makespan_seconds) if run else "",
        "loo_relative_error": "" if loo is None else loo,
        "step_seconds": step.get("value", ""),
        "step_seconds_source": step.get("source", ""),
        "assumptions": json.dumps(prediction.assumptions, sort_keys=True, default=str),
    }


def format_plan(path: Path) -> str:
    """``plan.csv`` as a short text table, for the terminal."""
    with Path(path).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    lines = [
        f"{'backend':<10} {'study':<9} {'mode':<10} {'G':>3} {'predicted':>10} "
        f"{'speedup':>7} {'eff':>5} {'GPU-h':>8} {'measured':>9} {'error':>7} {'LOO':>7}"
    ]
    outside = []
    for r in rows:
        mode = modes.label(r["mode"], r["gpus_per_trial"])
        if r["relative_error"] and abs(float(r["relative_error"])) > TOLERANCE:
            outside.append(f"{r['backend']} {mode} G={r['gpus']}")
        lines.append(
            f"{r['backend']:<10} {r['study']:<9} {mode:<10} {r['gpus']:>3} "
            f"{_seconds(r['predicted_makespan_seconds']):>10} {float(r['speedup']):>7.2f} "
            f"{float(r['efficiency']):>5.2f} {float(r['gpu_hours']):>8.3f} "
            f"{_seconds(r['measured_makespan_seconds']):>9} {_percent(r['relative_error']):>7} "
            f"{_percent(r['loo_relative_error']):>7}"
        )
    if outside:
        lines.append(
            f"predicted more than {TOLERANCE:.0%} off the measured makespan: "
            + ", ".join(outside)
            + " (the assumptions column of plan.csv says what each number came from)"
        )
    return "\n".join(lines)


def _seconds(value: str) -> str:
    if not value:
        return "-"
    seconds = float(value)
    return f"{seconds:.1f} s" if seconds < 3600 else f"{seconds / 3600:.2f} h"


def _percent(value: str) -> str:
    return f"{float(value):+.0%}" if value else "-"
