"""What one training run measured about itself: the parts its makespan is made of.

Every training run writes ``calibration.json`` beside its ``summary.json``
(:func:`write_run_calibration`, called by :func:`distmis.train.run.run_training`); the planner
merges the runs' calibrations into one per backend (:mod:`distmis.plan.calibration`). A run
from before this file existed is measured from its other files by :func:`measure_run`, the
same function.

The parts, all in seconds, medians over the run's finished trials (a straggler does not move
a median)::

    makespan = setup + [trials placed on slots, a slot waiting `relaunch` between two] + teardown
    trial    = startup + first_epoch_extra + E x epoch - epoch_gap + finish
    epoch    = steps_per_epoch x step + val + epoch_gap

- ``setup``: the run's start (``makespan_start``) to the first trial entering its training
  function: Ray Tune's or Train's set-up and the first worker processes.
- ``relaunch``: a slot's previous trial ending to its next trial entering the function: a
  new Tune trial process (experiment), a new Train worker group (hybrid), or the next
  configuration in the same group (data). Measured only where a slot ran two trials.
- ``startup`` / ``first_startup``: entering the function to the first training epoch
  (imports, data, model, restore), the first-started trial apart (it may build the node
  cache, and in data mode it alone imports the framework).
- ``step``: a training step on rank 0 in steady state (epochs after the first, training part
  of ``epochs.jsonl`` / ``steps_per_epoch``); ``val``: one validation pass in steady state;
  ``first_epoch_extra``: how much longer the first epoch took (graph tracing, allocator and
  cache warm-up); ``epoch_gap``: between one epoch's validation and the next epoch's start
  (checkpoint and report); ``finish``: the last validation to the model and result written.
- ``teardown``: the last trial's end to the run's end (the last report, Ray shutting down the
  run, records written).

``calibration.json`` (``format`` ``distmis-run-calibration/1``) is :meth:`RunCalibration.to_json`:
the fields below, a part that could not be measured is ``null``.
"""

from __future__ import annotations

import heapq
import itertools
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from distmis import modes
from distmis.fileio import read_json, versioned_fields, write_json
from distmis.plan.runs import MeasuredRun, MeasuredTrial, read_run

RUN_CALIBRATION_FILE = "calibration.json"
RUN_CALIBRATION_FORMAT = "distmis-run-calibration/1"
MADE_BY = modes.ANY_RULE
PARTS = (
    "setup_seconds",
    "relaunch_seconds",
    "first_startup_seconds",
    "startup_seconds",
    "step_seconds",
    "val_seconds",
    "first_epoch_extra_seconds",
    "epoch_gap_seconds",
    "finish_seconds",
    "teardown_seconds",
)


@dataclass(frozen=True)
class RunCalibration:
    """One run's shape and its measured parts (module docstring); None: not measurable."""

    backend: str
    mode: str
    gpus: int
    workers_per_trial: int
    slots: int  # configurations the runner allowed at once: 1, G or G/k
    busy_workers_per_node: int
    node_count: int
    hardware: str
    grid_size: int
    epochs: int
    batch_size_per_replica: int
    steps_per_epoch: int | None
    train_volumes: int | None  # the splits' sizes (info.json of its data; None: gone)
    val_volumes: int | None
    makespan_seconds: float
    timed_trials: int
    setup_seconds: float | None
    relaunch_seconds: float | None
    first_startup_seconds: float | None
    startup_seconds: float | None
    step_seconds: float | None
    val_seconds: float | None
    first_epoch_extra_seconds: float | None
    epoch_gap_seconds: float | None
    finish_seconds: float | None
    teardown_seconds: float | None
    path: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"format": RUN_CALIBRATION_FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> RunCalibration:
        names = {f.name for f in fields(cls)}
        return cls(**versioned_fields(payload, RUN_CALIBRATION_FORMAT, names))


def measure_run(run_dir: Path) -> RunCalibration:
    """Measure a finished run from its documented files (module docstring)."""
    return measure(read_run(Path(run_dir)))


def measure(run: MeasuredRun) -> RunCalibration:
    timed = [t for t in run.trials if t.status == "ok" and t.end_time is not None]
    by_start = sorted((t for t in run.trials if t.end_time is not None), key=lambda t: t.start_time)
    steps = [t.steps_per_epoch for t in timed if t.steps_per_epoch]
    first = by_start[0] if by_start else None
    later = [t for t in timed if t is not first]
    return RunCalibration(
        backend=run.backend,
        mode=run.mode,
        gpus=run.gpus,
        workers_per_trial=run.workers_per_trial,
        slots=run.concurrent_trials,
        busy_workers_per_node=run.busy_workers_per_node,
        node_count=run.node_count,
        hardware=", ".join(run.devices_seen) or "unknown",
        grid_size=run.grid_size,
        epochs=run.epochs,
        batch_size_per_replica=run.batch_size_per_replica,
        steps_per_epoch=max(steps) if steps else None,
        **split_sizes(run),
        makespan_seconds=run.makespan_seconds,
        timed_trials=len(timed),
        setup_seconds=by_start[0].start_time - run.makespan_start if by_start else None,
        relaunch_seconds=_median(slot_gaps(by_start, run.concurrent_trials)),
        first_startup_seconds=_startup(first) if first in timed else None,
        startup_seconds=_median(_startup(t) for t in (later or timed)),
        step_seconds=_median(_step(t) for t in timed),
        val_seconds=_median(_steady(t, lambda e: e.val_seconds) for t in timed),
        first_epoch_extra_seconds=_median(_first_epoch_extra(t) for t in timed),
        epoch_gap_seconds=_median(gap for t in timed for gap in _epoch_gaps(t)),
        finish_seconds=_median(
            t.end_time - t.epoch_times[-1].validated for t in timed if t.epoch_times
        ),
        teardown_seconds=run.makespan_end - max(t.end_time for t in by_start) if by_start else None,
        path=str(run.path),
    )


def split_sizes(run: MeasuredRun) -> dict[str, int | None]:
    """``train_volumes`` and ``val_volumes`` from the run's ``info.json``: its ``tfrecord_dir``
    as recorded when absolute; when relative (the workflow records it relative to its folder),
    against the folder that holds ``results/train/{backend}/{mode}/{G}gpu``. Never against the
    current directory: the data there may be another run's."""
    from distmis.shards.info import DatasetInfo

    if not run.tfrecord_dir:
        return {"train_volumes": None, "val_volumes": None}
    folder = Path(run.tfrecord_dir)
    if not folder.is_absolute():
        parents = run.path.resolve().parents
        folder = parents[4] / folder if len(parents) > 4 else None
    if folder is None or not (folder / "info.json").is_file():
        return {"train_volumes": None, "val_volumes": None}
    info = DatasetInfo.from_dir(folder)
    return {"train_volumes": info.count("train"), "val_volumes": info.count("val")}


def slot_gaps(trials: Sequence[MeasuredTrial], slots: int) -> list[float]:
    """Seconds each slot stood between two trials: ``trials`` in start order take the slot
    that freed first, as the runner placed them (the first ``slots`` take a fresh slot)."""
    free_at: list[float] = []
    gaps = []
    for trial in trials:
        if len(free_at) < slots:
            heapq.heappush(free_at, trial.end_time)
            continue
        freed = heapq.heappop(free_at)
        gaps.append(max(0.0, trial.start_time - freed))
        heapq.heappush(free_at, trial.end_time)
    return gaps


def _startup(trial: MeasuredTrial) -> float | None:
    """Entering the training function to the first training epoch."""
    if trial.epoch_times:
        return trial.epoch_times[0].started - trial.start_time
    if trial.fit_start_time is not None:
        return trial.fit_start_time - trial.start_time
    return None


def _step(trial: MeasuredTrial) -> float | None:
    """A steady training step; a run from before epochs.jsonl was timed gives its whole
    epoch (validation and checkpoint included) per step instead."""
    if not trial.steps_per_epoch:
        return None
    if not trial.epoch_times:
        return None if trial.epoch_seconds is None else trial.epoch_seconds / trial.steps_per_epoch
    return _steady(trial, lambda e: e.train_seconds / trial.steps_per_epoch)


def _steady(trial: MeasuredTrial, value) -> float | None:
    """Median of ``value(epoch)`` over the epochs after the first (the first if alone)."""
    epochs = trial.epoch_times[1:] or trial.epoch_times
    return _median(value(e) for e in epochs)


def _first_epoch_extra(trial: MeasuredTrial) -> float | None:
    if len(trial.epoch_times) < 2:
        return None
    whole = [e.train_seconds + e.val_seconds for e in trial.epoch_times]
    return max(0.0, whole[0] - statistics.median(whole[1:]))


def _epoch_gaps(trial: MeasuredTrial) -> list[float]:
    times = trial.epoch_times
    return [later.started - earlier.validated for earlier, later in itertools.pairwise(times)]


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def write_run_calibration(run_dir: Path, sizes: dict[str, int] | None = None) -> Path:
    """Measure the run in ``run_dir`` and write its ``calibration.json`` whole. ``sizes``
    (``train_volumes``, ``val_volumes``): the splits the run trained on, as the training
    process knows them, instead of looking up its ``info.json`` again."""
    path = Path(run_dir) / RUN_CALIBRATION_FILE
    calibration = measure_run(run_dir)
    if sizes is not None:
        calibration = replace(calibration, **sizes)
    write_json(path, calibration.to_json())
    return path


def read_run_calibration(run_dir: Path) -> RunCalibration:
    """``calibration.json`` of a run, or, for a run from before it was written, measured from
    the run's other files."""
    path = Path(run_dir) / RUN_CALIBRATION_FILE
    if not path.is_file():
        return measure_run(run_dir)
    payload = read_json(path, MADE_BY)
    try:
        # The folder it was read from, not where the run was written (it may have moved).
        return replace(RunCalibration.from_json(payload), path=str(run_dir))
    except (TypeError, ValueError) as exc:
        from distmis.errors import ContractError

        raise ContractError(f"{path}: {exc}; rerun {MADE_BY}") from exc
