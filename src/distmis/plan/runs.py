"""What the planner reads from a finished training run: only the documented files.

A run folder (``results/train/{backend}/{data|experiment|hybrid<k>}/{G}gpu``) holds
``summary.json`` and ``trials.csv`` and, per trial, ``trials/<trial_id>/result.json``,
``workers/rank0.json`` and ``epochs.jsonl``, read through their contract,
:mod:`distmis.run_folder`. :func:`read_run` turns them into a :class:`MeasuredRun`; a
missing or malformed file, or one of another format, raises
:class:`~distmis.errors.ContractError` naming it and the rule that writes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from distmis.run_folder import (
    RESULT_FILE,
    STATUS_OK,
    SUMMARY_FILE,
    TRIALS_FILE,
    EpochRecord,
    RunSummary,
    TrialRecord,
    TrialResult,
    WorkerInfo,
    read_epochs,
    read_trials,
    trial_folder,
    worker_path,
)


@dataclass(frozen=True)
class EpochTimes:
    """One validated epoch of ``epochs.jsonl`` with its timing."""

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
    train_volumes: int  # the split sizes the run trained on (its summary.json)
    val_volumes: int
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
    summary = RunSummary.read(run_dir / SUMMARY_FILE)
    trials = [_trial(run_dir, record) for record in read_trials(run_dir / TRIALS_FILE)]
    return MeasuredRun(
        path=run_dir,
        backend=summary.backend,
        mode=summary.mode,
        gpus=summary.gpus,
        workers_per_trial=summary.gpus_per_trial,
        makespan_seconds=summary.makespan_seconds,
        makespan_start=summary.makespan_start,
        makespan_end=summary.makespan_end,
        node_count=summary.node_count,
        scheduler=summary.scheduler,
        epochs=summary.epochs,
        batch_size_per_replica=summary.batch_size_per_replica,
        grid_size=summary.trial_count,
        devices_seen=summary.devices_seen,
        train_volumes=summary.train_volumes,
        val_volumes=summary.val_volumes,
        trials=tuple(sorted(trials, key=lambda t: t.start_time)),
    )


def _trial(run_dir: Path, record: TrialRecord) -> MeasuredTrial:
    directory = trial_folder(run_dir, record.trial_id)
    epoch_seconds = fit_start = steps = batch = None
    if record.status == STATUS_OK:
        result = TrialResult.read(directory / RESULT_FILE)
        rank0 = WorkerInfo.read(worker_path(directory, 0))
        trained = result.epochs - result.resumed_from_epoch
        epoch_seconds = result.fit_seconds / trained if trained > 0 else None
        fit_start = result.fit_start_time
        steps, batch = rank0.steps_per_epoch, rank0.global_batch_size
    return MeasuredTrial(
        trial_id=record.trial_id,
        status=record.status,
        start_time=record.start_time,
        epochs_run=record.epochs_run,
        startup_seconds=record.startup_seconds,
        epoch_seconds=epoch_seconds,
        steps_per_epoch=steps,
        global_batch_size=batch,
        end_time=record.end_time,
        fit_start_time=fit_start,
        epoch_times=_epoch_times(read_epochs(directory), record.start_time),
    )


def _epoch_times(lines: list[EpochRecord], attempt_start: float) -> tuple[EpochTimes, ...]:
    """The epochs of ``epochs.jsonl`` that the attempt starting at ``attempt_start`` trained
    (an earlier attempt's lines come first and are left out)."""
    return tuple(
        EpochTimes(
            epoch=line.epoch,
            started=line.started,
            train_seconds=line.train_seconds,
            val_seconds=line.val_seconds,
            validated=line.time,
        )
        for line in lines
        if line.started >= attempt_start
    )
