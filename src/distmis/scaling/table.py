"""The scaling table: one row per run, speedup and efficiency against the series' base run.

A series is the runs of one (backend, mode label, search, scheduler), the columns of
:data:`SERIES_COLUMNS`; ``mode`` holds the label: ``data``, ``experiment`` or ``hybrid{k}``
(each k its own series), ``search`` how the run chose its configurations: ``grid``, or the
algorithm and the configurations it proposed, ``random×8`` or ``tpe×8`` (summary.json
``search``; its seed is not part of it), ``scheduler`` ``none``, or ``asha`` when early
stopping ended poor configurations (other work than the same search without), and
``gpus_per_trial`` the GPUs one configuration
trains on (G, 1 or k). Its base is the series' own run with the fewest GPUs measured, ``B``
(normally 1): always a run of the same backend, mode label, search and scheduler, so a grid
run is never a random search's base, nor a run without ASHA one with it (they train different configurations, so their makespans' ratio is
no speedup). For a run on ``G`` GPUs:

- ``speedup_vs_{B}gpu``    = makespan(B) / makespan(G)
- ``efficiency_vs_{B}gpu`` = speedup / (G / B): 1 is linear scaling from the base.

Column names always carry the base, so a table whose smallest run is 2 GPUs cannot be
misread as speedup over one GPU; ``base_gpus`` repeats it per row. When series have
different bases, each base gets its own pair of columns and a row fills only its own
(the others are empty); :func:`own_speedup` and :func:`own_efficiency` pick a row's value.

Other columns: ``makespan_seconds`` (summary.json: from before the first trial starts to
after the last ends, start-up included); ``time_to_best_seconds`` (beside it: seconds from
the run's start until its best validation Dice so far came within ``report.quality_tolerance``
of its final best, see :mod:`~distmis.scaling.quality`; empty for a run without a single
validation); ``time_to_target_seconds`` (seconds from the run's start until its best
validation Dice so far first reached ``quality_target_dice``, the one bar of the whole study
set by ``report.quality_target``, by default 0.95 × the best validation Dice any run reached;
empty for a run that never reached it, so runs ending at different Dice compare at one bar);
``quality_target_dice`` (that bar, the same on every row); ``trials_ok``, ``trials_failed``, ``trials_stopped`` (ended early by ASHA);
``mean_trial_seconds`` (mean ``seconds`` of the ok trials only: failed and stopped trials
end early and would flatter it, and an ASHA run would look as if one configuration trained
faster, so the mean stays the time of one whole configuration in every run);
``volumes_per_second`` (the run's throughput: training volumes processed by all ok and
stopped trials (a stopped trial's epochs were real work), as each counted them (epochs ×
steps × global batch), divided by the makespan, so idle GPUs and start-up count against
it, unlike trials.csv's per-trial rate);
``best_val_dice`` (summary.json ``best.val_dice``: "faster" is only worth as much as the
model it finds); ``resumed`` (true: the makespan spans an interruption, so this row's
speedup, and every row's in its series if it is the base, is not a clean measurement);
``device`` (``gpu``, or ``cpu`` when G counted CPU workers standing in for GPUs, from
summary.json ``resources.requested.use_gpu``; ``unknown`` if not recorded); ``runner``
(``ray``, or ``local`` for ``distmis train --runner local``: one process without Ray's
start-up, so a series mixing the two compares unlike makespans and is warned about);
``startup_seconds`` (summary.json: every trial's time from being
asked for to its first training epoch, summed; empty where not recorded).

:func:`read_scaling_csv` also reads a table from before the newer columns, filling them as
an older run would have had them (no stopped trials, no scheduler, nothing recorded).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from distmis import backends, modes
from distmis.errors import ContractError
from distmis.fileio import atomic_path, read_json
from distmis.scaling.quality import (
    DEFAULT_TARGET,
    DEFAULT_TOLERANCE,
    QualityTarget,
    check_tolerance,
    quality_curve,
    study_best,
)
from distmis.scaling.timings import DEFAULT_BACKEND, GRID_SEARCH, SERIES, Run

log = logging.getLogger(__name__)

# What makes a series (a line in every figure, the runs a speedup compares): the columns of
# timings.SERIES, its one home, where a run's value of each is read from its summary.
SERIES_COLUMNS = list(SERIES)  # backend, mode (the label), search, scheduler
# What identifies and times a run; add_speedup puts base_gpus before makespan_seconds and the
# speedup columns after these, then RUN_COLUMNS.
LEAD_COLUMNS = [
    *SERIES_COLUMNS,
    "gpus",
    "gpus_per_trial",
    "makespan_seconds",
    "time_to_best_seconds",
    "time_to_target_seconds",
    "quality_target_dice",
]
RUN_COLUMNS = [
    "trials_ok",
    "trials_failed",
    "trials_stopped",
    "mean_trial_seconds",
    "volumes_per_second",
    "best_val_dice",
    "resumed",
    "device",
    "runner",
    "startup_seconds",
]
# Columns newer than scaling.csv itself, each with what an older table's run had: an older
# table lacks them and still plots.
NEWER_COLUMNS = {
    "gpus_per_trial": None,  # derived from mode and gpus (data: G, experiment: 1)
    "time_to_best_seconds": math.nan,
    "time_to_target_seconds": math.nan,
    "quality_target_dice": math.nan,  # an older table has no target: nothing reached it
    "trials_stopped": 0,
    "scheduler": "none",
    "startup_seconds": math.nan,
    "search": GRID_SEARCH,  # runs before summary.json /2 all trained the whole grid
}
# What G counts: GPUs, or CPU workers standing in for them (use_gpu: false).
DEVICE_NAMES = {True: "gpu", False: "cpu", None: "unknown"}


def speedup_column(base_gpus: int) -> str:
    return f"speedup_vs_{base_gpus}gpu"


def efficiency_column(base_gpus: int) -> str:
    return f"efficiency_vs_{base_gpus}gpu"


def run_metrics(
    runs: Sequence[Run],
    quality_tolerance: float = DEFAULT_TOLERANCE,
    quality_target: QualityTarget = DEFAULT_TARGET,
) -> pd.DataFrame:
    """Per-run columns (no speedup yet), one row per run, sorted by series then G."""
    quality_tolerance = check_tolerance(quality_tolerance)
    curves = [quality_curve(run, quality_tolerance) for run in runs]
    # One bar for the whole study: every run the table holds, whatever its series.
    target_dice = quality_target.dice_for(study_best(curves))
    log.info("quality target: validation Dice %.4g (%s)", target_dice, quality_target.describe())
    rows = []
    for run, curve in zip(runs, curves, strict=True):
        ok = [t for t in run.trials if t.ok]
        stopped = [t for t in run.trials if t.stopped]
        summary = run.summary
        rows.append(
            {
                **dict(zip(SERIES_COLUMNS, run.series, strict=True)),
                "gpus": summary.gpus,
                "gpus_per_trial": summary.gpus_per_trial,
                "makespan_seconds": summary.makespan_seconds,
                "time_to_best_seconds": curve.time_to_best_seconds,
                "time_to_target_seconds": curve.time_to_target_seconds(target_dice),
                "quality_target_dice": target_dice,
                "trials_ok": len(ok),
                "trials_failed": sum(t.failed for t in run.trials),
                "trials_stopped": len(stopped),
                "mean_trial_seconds": (sum(t.seconds for t in ok) / len(ok) if ok else math.nan),
                "volumes_per_second": (
                    sum(t.volumes_trained for t in ok + stopped) / summary.makespan_seconds
                ),
                "best_val_dice": (
                    math.nan if run.summary.best_val_dice is None else run.summary.best_val_dice
                ),
                "resumed": run.summary.resumed,
                "device": DEVICE_NAMES[summary.uses_gpus],
                "runner": summary.runner,
                "startup_seconds": (
                    math.nan if summary.startup_seconds is None else summary.startup_seconds
                ),
            }
        )
    columns = [*LEAD_COLUMNS, *RUN_COLUMNS]
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values([*SERIES_COLUMNS, "gpus"], ignore_index=True)


def add_speedup(metrics: pd.DataFrame) -> pd.DataFrame:
    """``metrics`` plus ``base_gpus`` and speedup/efficiency columns named after each base."""
    if metrics.duplicated([*SERIES_COLUMNS, "gpus"]).any():
        raise ValueError(f"more than one run per ({', '.join(SERIES_COLUMNS)}, gpus)")
    # Each series' base is its run with the fewest GPUs; join it back onto every row.
    base_rows = metrics.loc[metrics.groupby(SERIES_COLUMNS)["gpus"].idxmin()]
    base = base_rows[[*SERIES_COLUMNS, "gpus", "makespan_seconds", "resumed"]].rename(
        columns={
            "gpus": "base_gpus",
            "makespan_seconds": "base_makespan",
            "resumed": "base_resumed",
        }
    )
    table = metrics.merge(base, on=SERIES_COLUMNS, how="left")
    for key, series in metrics.groupby(SERIES_COLUMNS):
        if series["runner"].nunique() > 1:
            log.warning(
                "%s mixes runners (%s): a local run has no Ray start-up, so its speedups "
                "compare unlike makespans",
                "/".join(key),
                ", ".join(sorted(series["runner"].unique())),
            )
    speedup = table["base_makespan"] / table["makespan_seconds"]
    efficiency = speedup / (table["gpus"] / table["base_gpus"])
    speedup_columns = []
    for base in sorted(table["base_gpus"].unique()):
        own = table["base_gpus"] == base
        table[speedup_column(base)] = speedup.where(own)
        table[efficiency_column(base)] = efficiency.where(own)
        speedup_columns += [speedup_column(base), efficiency_column(base)]
    for _, row in base_rows[base_rows["resumed"]].iterrows():
        log.warning(
            "the base run of %s (%d GPUs) was resumed: every speedup of that series is off",
            "/".join(row[SERIES_COLUMNS]),
            row["gpus"],
        )
    ordered = [
        *SERIES_COLUMNS,
        "gpus",
        "gpus_per_trial",
        "base_gpus",
        "makespan_seconds",
        "time_to_best_seconds",
        "time_to_target_seconds",
        "quality_target_dice",
        *speedup_columns,
    ]
    return table[ordered + RUN_COLUMNS]


def scaling_table(
    runs: Sequence[Run],
    quality_tolerance: float = DEFAULT_TOLERANCE,
    quality_target: QualityTarget = DEFAULT_TARGET,
) -> pd.DataFrame:
    """The scaling table of ``runs`` (see the module docstring for every column).

    ``quality_tolerance`` (absolute Dice, ``report.quality_tolerance``) decides
    ``time_to_best_seconds``; ``quality_target`` (``report.quality_target``, resolved over all
    of ``runs``: they are the study) ``time_to_target_seconds``.
    """
    if not runs:
        raise ValueError("no runs to tabulate")
    return add_speedup(run_metrics(runs, quality_tolerance, quality_target))


def own_speedup(table: pd.DataFrame) -> pd.Series:
    """Each row's speedup against its own series' base, whatever that base is."""
    return _own(table, speedup_column)


def own_efficiency(table: pd.DataFrame) -> pd.Series:
    return _own(table, efficiency_column)


def _own(table: pd.DataFrame, column_for) -> pd.Series:
    values = pd.Series(math.nan, index=table.index, dtype=float)
    for base in table["base_gpus"].unique():
        own = table["base_gpus"] == base
        values[own] = table.loc[own, column_for(base)]
    return values


def write_scaling_csv(table: pd.DataFrame, path: Path) -> Path:
    """Write the table whole (temp file, then rename); 6 significant digits keep it readable."""
    path = Path(path)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    log.info("wrote %s (%d runs)", path, len(table))
    return path


def read_scaling_csv(path: Path) -> pd.DataFrame:
    """Read a table written by :func:`write_scaling_csv`, checking the columns the plots use."""
    path = Path(path)
    rule = "the scaling rule (`distmis scaling`)"
    if not path.is_file():
        raise ContractError(f"{path} is missing (it is written by {rule})")
    try:
        table = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise ContractError(f"{path} is not a readable CSV ({exc}); rerun {rule}") from exc
    required = [*SERIES_COLUMNS, "gpus", "base_gpus", "makespan_seconds", *RUN_COLUMNS]
    required = [c for c in required if c not in NEWER_COLUMNS]
    missing = [c for c in required if c not in table.columns]
    if not missing:
        for base in sorted(table["base_gpus"].unique()):
            missing += [
                c for c in (speedup_column(base), efficiency_column(base)) if c not in table.columns
            ]
    if missing:
        raise ContractError(f"{path} lacks column(s) {', '.join(missing)}; rerun {rule}")
    if table.empty:
        raise ContractError(f"{path} has no rows; rerun {rule}")
    _fill_newer_columns(table)
    table[SERIES_COLUMNS] = table[SERIES_COLUMNS].astype(str)
    # astype(bool) would read the string "False" as true.
    resumed = table["resumed"].map({True: True, False: False, "True": True, "False": False})
    if resumed.isna().any():
        raise ContractError(f"{path}: resumed must be True or False; rerun {rule}")
    table["resumed"] = resumed.astype(bool)
    return table


def _fill_newer_columns(table: pd.DataFrame) -> None:
    """Give a table from before the newer columns what its (data/experiment) runs had."""
    for column, value in NEWER_COLUMNS.items():
        if column not in table.columns:
            table[column] = value
    if table["gpus_per_trial"].isna().any():
        # Tables from before the column held data and experiment runs only.
        derived = [
            modes.get(mode).workers_per_trial(gpus)
            for mode, gpus in zip(table["mode"], table["gpus"], strict=True)
        ]
        derived = pd.Series(derived, index=table.index)
        table["gpus_per_trial"] = table["gpus_per_trial"].fillna(derived).astype(int)
    # A column pandas read as all-empty is float NaN; the label is text.
    table["scheduler"] = table["scheduler"].fillna("none").astype(str)


def attach_test_dice(table: pd.DataFrame, eval_summaries: Sequence[Path]) -> pd.DataFrame:
    """Add ``test_dice``: the evaluated model's mean test Dice, on the run it came from.

    Each ``results/evaluate/{backend}/{mode}/summary.json`` (rule evaluate) scores the best model
    of one (backend, mode label), trained at one G; its ``model`` path
    (``results/train/{backend}/{mode}/{G}gpu/...``, the mode folder being the label, e.g.
    hybrid2) names the mode and G, its ``backend`` key
    the backend (without one: the backend folder the summary or its model sits in, or
    TensorFlow for a summary from before backends had folders; a folder that disagrees is a
    contract error). The value is the mean over regions of the per-region mean Dice. Rows
    without an evaluated model get NaN, and so do the rows of a (backend, mode, G) measured
    with more than one search: the summary does not say which search's run it scored, and a
    grid model's Dice must not sit beside a random search's speedup (a warning says so).
    """
    table = table.copy()
    table["test_dice"] = math.nan
    for path in eval_summaries:
        path = Path(path)
        summary = read_json(path, "rule evaluate")
        model = Path(summary["model"])
        mode, gpus = model.parent.parent.name, int(model.parent.name.removesuffix("gpu"))
        backend = _eval_backend(path, summary, model)
        dice = [region["dice"]["mean"] for region in summary["regions"].values()]
        rows = (table["backend"] == backend) & (table["mode"] == mode) & (table["gpus"] == gpus)
        if rows.sum() > 1:
            log.warning(
                "%s scored %s, but %s/%s at G = %d was measured with several searches (%s): "
                "test_dice left empty, as which one it scored is not known",
                path,
                model,
                backend,
                mode,
                gpus,
                ", ".join(
                    search + ("" if scheduler == "none" else f" with {scheduler}")
                    for search, scheduler in zip(
                        table.loc[rows, "search"], table.loc[rows, "scheduler"], strict=True
                    )
                ),
            )
            continue
        table.loc[rows, "test_dice"] = sum(dice) / len(dice)
    return table


def _eval_backend(path: Path, summary: dict, model: Path) -> str:
    """The backend whose model an eval ``summary.json`` scored; its folders must agree."""
    folders = {
        name
        for name in (path.parent.parent.name, model.parent.parent.parent.name)
        if name in backends.NAMES
    }
    backend = str(summary.get("backend") or (min(folders) if folders else DEFAULT_BACKEND))
    if folders - {backend}:
        raise ContractError(
            f"{path}: backend {backend} disagrees with its folder {path.parent.parent.name}/ "
            f"or the model it scored, {model}; rerun rule evaluate"
        )
    return backend
