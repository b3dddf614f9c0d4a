"""What the planner reads from a finished training run: only the documented files.

A run folder (``results/train/{backend}/{data|experiment|hybrid<k>}/{G}gpu``) holds
``summary.json`` and ``trials.csv`` (:mod:`distmis.train.summary`, :mod:`distmis.train.trials`)
and, per trial, ``trials/<trial_id>/result.json``, ``workers/rank0.json`` and ``epochs.jsonl``
(:mod:`distmis.trial`). :func:`read_run` turns them into a :class:`MeasuredRun`; a
missing or malformed file raises :class:`~distmis.errors.ContractError` naming it and the
rule that writes it. Optional columns and keys from older runs (``gpus_per_trial``,
``epochs_run``, ``startup_seconds``) fall back as those runs were written.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distmis import modes
from distmis.errors import ContractError
from distmis.trial import EPOCHS_FILE, STATUS_OK

ANY_RULE = modes.ANY_RULE


@dataclass(frozen=True)
class EpochTimes:
    """One validated epoch of ``epochs.jsonl`` with its timing (runs from before the timing
    was recorded have none, and give no :class:`EpochTimes`)."""

    epoch: int
    started: float
    train_seconds: float
    val_seconds: float
    validated: float


@dataclass(frozen=True)
class MeasuredTrial:
    """One configuration of a run. ``epoch_seconds`` (fit seconds per epoch this attempt
    trained), ``fit_start_time`` and ``steps_per_epoch`` are None unless the trial finished
    (``result.json``); ``epoch_times`` are its epochs' timings, last attempt only."""

    trial_id: str
    status: str
    start_time: float
    epochs_run: int
    startup_seconds: float | None
    epoch_seconds: float | None
    steps_per_epoch: int | None
    global_batch_size: int | None
    end_time: float | None = None
    fit_start_time: float | None = None
    epoch_times: tuple[EpochTimes, ...] = ()


@dataclass(frozen=True)
class MeasuredRun:
    """One run; ``trials`` in the order they started (the grid order the runner used)."""

    path: Path
    backend: str
    mode: str
    gpus: int
    workers_per_trial: int
    makespan_seconds: float
    makespan_start: float
    makespan_end: float
    node_count: int
    scheduler: str
    epochs: int
    batch_size_per_replica: int
    grid_size: int
    devices_seen: tuple[str, ...]
    tfrecord_dir: str | None
    trials: tuple[MeasuredTrial, ...]

    @property
    def concurrent_trials(self) -> int:
        """Configurations that trained at once: 1 (data), G (experiment), G/k (hybrid)."""
        return max(1, self.gpus // self.workers_per_trial)

    @property
    def busy_workers_per_node(self) -> int:
        """Workers that trained at once on one node: the trials running together times their
        workers, spread over the nodes the run used (how many share a node's CPUs, memory
        bandwidth and PCIe)."""
        busy = min(self.grid_size, self.concurrent_trials) * self.workers_per_trial
        return max(1, math.ceil(busy / max(1, self.node_count)))

    @property
    def epochs_per_trial(self) -> list[int]:
        """Epochs each configuration trained, in start order (fewer where ASHA stopped it)."""
        return [t.epochs_run for t in self.trials]


def read_run(run_dir: Path) -> MeasuredRun:
    """Read one run folder (see the module docstring)."""
    run_dir = Path(run_dir)
    summary = _read_json(run_dir / "summary.json", ANY_RULE)
    try:
        mode = summary["mode"]
        gpus = int(summary["gpus"])
        settings = summary["settings"]
        made_by = modes.MODES[mode].rule if mode in modes.MODES else ANY_RULE
        workers = summary.get("gpus_per_trial") or modes.get(mode).workers_per_trial(gpus)
        epochs = int(settings["epochs"])
        trials = _read_trials(run_dir, epochs, made_by)
        return MeasuredRun(
            path=run_dir,
            backend=summary.get("backend", "tensorflow"),
            mode=mode,
            gpus=gpus,
            workers_per_trial=int(workers),
            makespan_seconds=float(summary["makespan_seconds"]),
            makespan_start=float(summary["makespan_start"]),
            makespan_end=float(summary["makespan_end"]),
            node_count=int(summary.get("node_count") or 1),
            scheduler=summary.get("scheduler", "none"),
            epochs=epochs,
            batch_size_per_replica=int(settings["batch_size_per_replica"]),
            grid_size=int(summary["trial_count"]),
            devices_seen=tuple(summary.get("devices_seen", ())),
            tfrecord_dir=settings.get("tfrecord_dir"),
            trials=tuple(sorted(trials, key=lambda t: t.start_time)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ContractError(
            f"{run_dir}/summary.json is malformed ({exc!r}); rerun {ANY_RULE}"
        ) from exc


def _read_trials(run_dir: Path, epochs: int, made_by: str) -> list[MeasuredTrial]:
    path = run_dir / "trials.csv"
    if not path.is_file():
        raise ContractError(f"{path} is missing (it is written by {made_by})")
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    trials = []
    for row in rows:
        try:
            trials.append(_trial(run_dir, row, epochs, made_by))
        except (KeyError, ValueError) as exc:
            raise ContractError(f"{path} is malformed ({exc!r}); rerun {made_by}") from exc
    return trials


def _trial(run_dir: Path, row: dict[str, str], epochs: int, made_by: str) -> MeasuredTrial:
    directory = run_dir / "trials" / row["trial_id"]
    ok = row["status"] == STATUS_OK
    result = _read_json(directory / "result.json", made_by) if ok else None
    rank0 = _read_json(directory / "workers" / "rank0.json", made_by) if ok else None
    startup = _optional_float(row.get("startup_seconds"))
    epoch_seconds = fit_start = None
    if result is not None:
        if startup is None:
            startup = _optional_float(result.get("startup_seconds"))
        trained = int(result["epochs"]) - int(result.get("resumed_from_epoch", 0))
        epoch_seconds = float(result["fit_seconds"]) / trained if trained > 0 else None
        fit_start = _optional_float(result.get("fit_start_time"))
    epochs_run = row.get("epochs_run") or (epochs if ok else 0)
    start = float(row["start_time"])
    return MeasuredTrial(
        trial_id=row["trial_id"],
        status=row["status"],
        start_time=start,
        epochs_run=int(epochs_run),
        startup_seconds=startup,
        epoch_seconds=epoch_seconds,
        steps_per_epoch=int(rank0["steps_per_epoch"]) if rank0 else None,
        global_batch_size=int(rank0["global_batch_size"]) if rank0 else None,
        end_time=_optional_float(row.get("end_time")),
        fit_start_time=fit_start,
        epoch_times=_epoch_times(directory / EPOCHS_FILE, start, made_by),
    )


def _epoch_times(path: Path, attempt_start: float, made_by: str) -> tuple[EpochTimes, ...]:
    """The timed epochs of ``epochs.jsonl`` that the attempt starting at ``attempt_start``
    trained (an earlier attempt's lines come first and are left out)."""
    if not path.is_file():
        return ()
    times = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            if "train_seconds" not in entry or float(entry["started"]) < attempt_start:
                continue
            times.append(
                EpochTimes(
                    epoch=int(entry["epoch"]),
                    started=float(entry["started"]),
                    train_seconds=float(entry["train_seconds"]),
                    val_seconds=float(entry["val_seconds"]),
                    validated=float(entry["time"]),
                )
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ContractError(
                f"{path} line {number} is malformed ({exc!r}); rerun {made_by}"
            ) from exc
    return tuple(times)


def _optional_float(value: Any) -> float | None:
    return None if value in (None, "") else float(value)


def _read_json(path: Path, made_by: str) -> dict[str, Any]:
    if not path.is_file():
        raise ContractError(f"{path} is missing (it is written by {made_by})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ContractError(f"{path} is not JSON ({exc}); rerun {made_by}") from exc
