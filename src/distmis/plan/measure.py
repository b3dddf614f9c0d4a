"""What one training run measured about itself: the parts its makespan is made of.

The planner measures each finished run from its files (:func:`measure_run`, through
:func:`distmis.plan.runs.read_run` and so :mod:`distmis.run_folder`: ``summary.json``,
``trials.csv`` and each trial's ``result.json``, ``workers/rank0.json`` and ``epochs.jsonl``)
and merges the runs' calibrations into one per backend (:mod:`distmis.plan.calibration`).
Training writes nothing for the planner beyond those files; the split sizes come from
``summary.json`` (``train_volumes``, ``val_volumes``: what the run trained on).

The parts, all in seconds, medians over the run's finished trials (a straggler does not move
a median)::

    makespan = setup + [trials placed on slots, a slot waiting `relaunch` between two] + teardown
    trial    = startup + first_epoch_extra + E x epoch - epoch_gap + finish
    epoch    = steps_per_epoch x step + val + epoch_gap

- ``setup``: the run's start (``makespan_start``) to the first trial entering its training
  function: Ray Tune's or Train's set-up and the first worker processes.
- ``first_wave_spread``: the first wave's (the first ``slots`` trials') last start minus its
  first: a wave does not enter its training functions at one instant (Tune launches trial
  processes one after another, and processes starting together on a node contend). Measured
  only where two or more trials started on fresh slots.
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

A part that could not be measured is None.
"""

from __future__ import annotations

import heapq
import itertools
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from distmis.plan.runs import MeasuredRun, MeasuredTrial, read_run

PARTS = (
    "setup_seconds",
    "first_wave_spread_seconds",
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
    train_volumes: int  # the splits' sizes it trained on (its summary.json)
    val_volumes: int
    makespan_seconds: float
    timed_trials: int
    setup_seconds: float | None
    first_wave_spread_seconds: float | None
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
        train_volumes=run.train_volumes,
        val_volumes=run.val_volumes,
        makespan_seconds=run.makespan_seconds,
        timed_trials=len(timed),
        setup_seconds=by_start[0].start_time - run.makespan_start if by_start else None,
        first_wave_spread_seconds=first_wave_spread(by_start, run.concurrent_trials),
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


def first_wave_spread(trials: Sequence[MeasuredTrial], slots: int) -> float | None:
    """Seconds from the first to the last start of the first wave: ``trials`` in start order,
    the first ``slots`` of them on fresh slots. None where fewer than two started fresh."""
    wave = trials[:slots]
    if len(wave) < 2:
        return None
    return wave[-1].start_time - wave[0].start_time


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
    """A steady training step; a trial whose last attempt validated no epoch (resumed after
    its last checkpoint) gives its whole epoch (validation and checkpoint included) per step
    instead."""
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
