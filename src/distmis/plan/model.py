"""Predict the makespan of a whole grid in each parallelism mode at G GPUs.

From a :class:`~distmis.plan.calibration.Calibration` (seconds measured by earlier runs):

- step seconds at ``w`` workers: ``step + allreduce(w)``. Every worker still steps on its own
  ``batch_size_per_replica``; the compute is split ``w`` ways by the epoch having
  ``steps_per_epoch(w) = ceil(train_volumes / (batch × w))`` steps, so an epoch costs about
  ``compute / w + steps × allreduce(w)``. ``allreduce`` is the ring formula of
  :mod:`distmis.plan.allreduce`, fitted to the measured points; a ring spanning nodes
  (``w > gpus_per_node``) runs at ``inter_node_bandwidth`` when given.
- an epoch at ``w`` workers: ``steps_per_epoch(w) × step_w + val / w`` (validation is
  sharded over the workers too).
- a trial (configuration ``i`` of ``epochs_i`` epochs):
  experiment: ``trial_startup + epochs_i × epoch(1)``, G at once;
  hybrid k: ``group_startup + epochs_i × epoch(k)``, G/k at once (each trial starts its own
  Ray Train worker group);
  data: ``epochs_i × epoch(G)`` one after another in one worker group, the first also paying
  ``group_startup`` and every later one ``config_startup``.
- the makespan: those durations list-scheduled in grid order (:func:`~distmis.plan.schedule.simulate`)
  on 1 (data), G (experiment) or G/k (hybrid) slots.

``speedup`` is against the same mode at G=1 (for hybrid, experiment mode at G=1: a hybrid
trial of one worker is an experiment trial), ``efficiency = speedup / G`` and ``gpu_hours =
makespan × G / 3600``. ``Prediction.assumptions`` names every number used with its source:
``measured``, ``config`` (calibration sizes), ``default`` (a constant here) or ``flag``
(an argument of :func:`predict`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from distmis.plan.allreduce import RING_FORMULA, fit_ring, ring_allreduce_seconds
from distmis.plan.calibration import Calibration
from distmis.plan.schedule import Schedule, simulate

MODES = ("data", "experiment", "hybrid")
# PyTorch bf16 + channels_last_3d step of batch 2 at 240x240x152 on one H200 (README, GPU
# section). Applied only when a caller asks for the GPU projection (gpu_step_seconds).
H200_STEP_SECONDS = 0.0717
DEFAULT_GPUS_PER_NODE = 4


@dataclass(frozen=True)
class Prediction:
    """A predicted run: ``trial_seconds`` per configuration (grid order) and its schedule."""

    mode: str
    gpus: int
    workers_per_trial: int
    concurrent_trials: int
    makespan_seconds: float
    baseline_makespan_seconds: float
    trial_seconds: tuple[float, ...]
    schedule: Schedule
    assumptions: dict[str, dict[str, Any]]

    @property
    def speedup(self) -> float:
        return self.baseline_makespan_seconds / self.makespan_seconds

    @property
    def efficiency(self) -> float:
        return self.speedup / self.gpus

    @property
    def gpu_hours(self) -> float:
        return self.makespan_seconds * self.gpus / 3600.0


def predict(
    calibration: Calibration,
    mode: str,
    gpus: int,
    k: int | None = None,
    gpus_per_node: int = DEFAULT_GPUS_PER_NODE,
    gpu_step_seconds: float | None = None,
    inter_node_bandwidth: float | None = None,
    epochs_per_trial: Sequence[int] | None = None,
    intra_node_bandwidth: float | None = None,
) -> Prediction:
    """The makespan of ``calibration``'s grid in ``mode`` on ``gpus`` GPUs (module docstring).

    ``k``: hybrid mode's GPUs per trial (2 <= k, k divides G). ``gpu_step_seconds`` replaces
    the measured step (e.g. :data:`H200_STEP_SECONDS` to project a CPU calibration onto
    GPUs; validation is scaled by the same ratio). ``inter_node_bandwidth`` /
    ``intra_node_bandwidth`` (bytes per second) replace the fitted ring bandwidth across /
    within nodes. ``epochs_per_trial``: epochs each configuration trains, grid order (ASHA
    stops some early; e.g. a measured run's ``MeasuredRun.epochs_per_trial``); default every
    one trains ``calibration.epochs``.
    """
    workers = _workers_per_trial(mode, gpus, k)
    epochs = _epochs(calibration, epochs_per_trial)
    plan = _Plan(
        calibration, gpus_per_node, gpu_step_seconds, inter_node_bandwidth, intra_node_bandwidth
    )
    durations = plan.trial_seconds(mode, workers, epochs)
    slots = gpus // workers
    schedule = simulate(durations, slots)
    baseline_mode = "experiment" if mode == "hybrid" else mode
    baseline = simulate(plan.trial_seconds(baseline_mode, 1, epochs), 1)
    plan.note("epochs_per_trial", list(epochs), "flag" if epochs_per_trial else "config")
    plan.note("gpus", gpus, "flag")
    plan.note("gpus_per_node", gpus_per_node, "flag")
    plan.note("workers_per_trial", workers, "flag" if mode == "hybrid" else "config")
    plan.note("concurrent_trials", slots, "config")
    plan.note("speedup_baseline", f"{baseline_mode} at G=1", "config")
    return Prediction(
        mode=mode,
        gpus=gpus,
        workers_per_trial=workers,
        concurrent_trials=slots,
        makespan_seconds=schedule.makespan_seconds,
        baseline_makespan_seconds=baseline.makespan_seconds,
        trial_seconds=tuple(durations),
        schedule=schedule,
        assumptions=plan.assumptions,
    )


def validate(prediction: Prediction, measured_makespan: float) -> float:
    """Relative error of the prediction: ``(predicted - measured) / measured``."""
    if measured_makespan <= 0:
        raise ValueError(f"measured makespan must be > 0, got {measured_makespan}")
    return (prediction.makespan_seconds - measured_makespan) / measured_makespan


def _workers_per_trial(mode: str, gpus: int, k: int | None) -> int:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if gpus < 1:
        raise ValueError(f"gpus must be >= 1, got {gpus}")
    if mode == "hybrid":
        if k is None or k < 2 or gpus % k:
            raise ValueError(f"hybrid mode on G = {gpus} needs k >= 2 dividing G, got k = {k}")
        return k
    implied = gpus if mode == "data" else 1
    if k is not None and k != implied:
        raise ValueError(f"{mode} mode on G = {gpus} has {implied} GPUs per trial, got k = {k}")
    return implied


def _epochs(calibration: Calibration, epochs_per_trial: Sequence[int] | None) -> list[int]:
    if epochs_per_trial is None:
        return [calibration.epochs] * calibration.grid_size
    epochs = [int(e) for e in epochs_per_trial]
    if len(epochs) != calibration.grid_size:
        raise ValueError(
            f"epochs_per_trial needs one entry per configuration ({calibration.grid_size}), "
            f"got {len(epochs)}"
        )
    if any(not 1 <= e <= calibration.epochs for e in epochs):
        raise ValueError(f"epochs_per_trial must lie in 1..{calibration.epochs}, got {epochs}")
    return epochs


class _Plan:
    """The per-trial arithmetic, noting every number it uses in ``assumptions``."""

    def __init__(
        self,
        calibration: Calibration,
        gpus_per_node: int,
        gpu_step_seconds: float | None,
        inter_node_bandwidth: float | None,
        intra_node_bandwidth: float | None,
    ) -> None:
        if gpus_per_node < 1:
            raise ValueError(f"gpus_per_node must be >= 1, got {gpus_per_node}")
        self.calibration = calibration
        self.gpus_per_node = gpus_per_node
        self.inter_node_bandwidth = inter_node_bandwidth
        self.assumptions: dict[str, dict[str, Any]] = {}
        c = calibration
        for name in ("train_volumes", "batch_size_per_replica", "grid_size", "parameter_count"):
            self._from_calibration(name)
        for name in ("trial_startup_seconds", "group_startup_seconds", "config_startup_seconds"):
            self._from_calibration(name)
        if gpu_step_seconds is None:
            self.step_seconds, self.val_seconds = c.step_seconds, c.val_seconds
            self._from_calibration("step_seconds")
            self._from_calibration("val_seconds")
        else:
            if gpu_step_seconds <= 0:
                raise ValueError(f"gpu_step_seconds must be > 0, got {gpu_step_seconds}")
            self.step_seconds = gpu_step_seconds
            # Validation runs on the same device: it speeds up as the step does.
            self.val_seconds = c.val_seconds * gpu_step_seconds / c.step_seconds
            self.note(
                "step_seconds",
                gpu_step_seconds,
                "flag",
                "gpu_step_seconds replaces the measured step",
            )
            self.note(
                "val_seconds",
                self.val_seconds,
                "flag",
                "measured val x gpu_step_seconds / measured step",
            )
        self.ring = fit_ring(c.allreduce_seconds, c.parameter_bytes)
        self.intra_bandwidth = intra_node_bandwidth or self.ring.bandwidth
        self.note("allreduce_formula", RING_FORMULA, "config")
        self.note(
            "allreduce_measured_seconds",
            {str(w): s for w, s in sorted(c.allreduce_seconds.items())},
            "measured",
        )
        self.note(
            "allreduce_bandwidth",
            None if math.isinf(self.intra_bandwidth) else self.intra_bandwidth,
            "flag" if intra_node_bandwidth else self.ring.source,
            "bytes/s within a node, given"
            if intra_node_bandwidth
            else f"bytes/s within a node, fitted to {self.ring.points} points (None: no "
            "per-byte cost measured)",
        )
        self.note(
            "allreduce_latency_seconds",
            self.ring.latency_seconds,
            self.ring.source,
            "per log2(w) round",
        )

    def note(self, name: str, value: Any, source: str, detail: str = "") -> None:
        self.assumptions[name] = {"value": value, "source": source, "detail": detail}

    def _from_calibration(self, name: str) -> None:
        kind, _, detail = self.calibration.source(name).partition(":")
        self.note(name, getattr(self.calibration, name), kind.strip(), detail.strip())

    def allreduce_seconds(self, workers: int) -> float:
        bandwidth, source = self.intra_bandwidth, self.assumptions["allreduce_bandwidth"]["source"]
        if workers > self.gpus_per_node:
            if self.inter_node_bandwidth is not None:
                bandwidth, source = self.inter_node_bandwidth, "flag"
                self.note("inter_node_bandwidth", bandwidth, "flag", "bytes/s; a ring across nodes")
            else:
                self.note(
                    "inter_node_bandwidth",
                    None,
                    "default",
                    "not given: a ring across nodes is assumed as fast as within one",
                )
        seconds = ring_allreduce_seconds(
            workers, self.calibration.parameter_bytes, bandwidth, self.ring.latency_seconds
        )
        self.note(f"allreduce_seconds[{workers}]", seconds, source, "ring formula")
        return seconds

    def epoch_seconds(self, workers: int) -> float:
        steps = self.calibration.steps_per_epoch(workers)
        step = self.step_seconds + self.allreduce_seconds(workers)
        self.note(
            f"steps_per_epoch[{workers}]", steps, "config", "ceil(train_volumes / (batch x w))"
        )
        return steps * step + self.val_seconds / workers

    def trial_seconds(self, mode: str, workers: int, epochs: Sequence[int]) -> list[float]:
        epoch = self.epoch_seconds(workers)
        c = self.calibration
        if mode == "experiment":
            return [c.trial_startup_seconds + e * epoch for e in epochs]
        if mode == "hybrid":
            return [c.group_startup_seconds + e * epoch for e in epochs]
        return [
            (c.group_startup_seconds if i == 0 else c.config_startup_seconds) + e * epoch
            for i, e in enumerate(epochs)
        ]
