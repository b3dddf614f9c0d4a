"""Predict the makespan of a whole grid in each parallelism mode at G GPUs.

From a :class:`~distmis.plan.calibration.Calibration` (what runs measured) and a
:class:`Study` (what is planned: the grid and its sizes, and for a projection onto other
hardware the step time there), with ``b`` workers training at once on a node:

- a step at ``w`` workers: ``step(b) + allreduce(w)``: every worker steps on its own
  ``batch_size_per_replica``, and the ring all-reduce of :mod:`distmis.plan.allreduce`
  (fitted to the measured points; a ring spanning nodes, ``w > gpus_per_node``, at
  ``inter_node_bandwidth`` when given) comes on top;
- an epoch: ``ceil(train_volumes / (batch x w))`` such steps, a validation pass of
  ``ceil(val_volumes / (batch x w))`` validation steps (slowed as the training step is at
  ``b``), and the epoch gap (checkpoint and report);
- a trial of ``E`` epochs: ``startup + first_epoch_extra + E x epoch - epoch_gap + finish``
  (the first trial's start-up is ``first_startup``), its mode's measured parts;
- the makespan: ``setup + teardown`` around the trials list-scheduled in grid order
  (:func:`~distmis.plan.schedule.simulate`) on 1 (data), G (experiment) or G/k (hybrid)
  slots, a slot waiting ``relaunch`` between two trials and the first wave's starts spread
  over ``first_wave_spread``.

With ASHA (``Study.scheduler == "asha"``) a trial trains the epochs :func:`asha_epochs` gives.
``speedup`` is against the same mode at G=1 (for hybrid, experiment mode at G=1: a hybrid
trial of one worker is an experiment trial), ``efficiency = speedup / G`` and ``gpu_hours =
makespan × G / 3600``. ``Prediction.assumptions`` names every number used with its source:
``measured``, ``config`` (calibration or study sizes), ``default`` (a constant here) or
``flag`` (an argument of :func:`predict` or a study field).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from distmis import modes
from distmis.plan.allreduce import RING_FORMULA, fit_ring, ring_allreduce_seconds
from distmis.plan.calibration import Calibration
from distmis.plan.schedule import Schedule, simulate

# PyTorch bf16 + channels_last_3d step of batch 2 at 240x240x152 on one H200 (benchmarks/README.md, GPU
# section). Applied only when a study asks for a GPU projection (Study.step_seconds).
H200_STEP_SECONDS = 0.0717
DEFAULT_GPUS_PER_NODE = 4
# A projection onto GPUs cannot use the all-reduce fitted on the measuring machine (Gloo
# between CPU processes); without flags it assumes an NVLink-class link within a node,
# 100 Gb/s InfiniBand between nodes, and NCCL's per-round latency for small buffers.
GPU_INTRA_NODE_BANDWIDTH = 100e9  # bytes per second
GPU_INTER_NODE_BANDWIDTH = 12.5e9  # bytes per second
GPU_ALLREDUCE_LATENCY_SECONDS = 30e-6  # per log2(w) round


@dataclass(frozen=True)
class Study:
    """What is planned. ``label``: ``measured`` (the grid and sizes the runs had, on their
    machine) or ``projected`` (another grid or size, on the device whose training step is
    ``step_seconds``; its validation step scales by the same ratio, and contention between a
    node's workers is not modelled there). ``scheduler``: ``none`` or ``asha`` with its
    ``grace_period`` and ``reduction_factor``."""

    label: str
    grid_size: int
    epochs: int
    train_volumes: int
    val_volumes: int
    batch_size_per_replica: int
    step_seconds: float | None = None
    scheduler: str = "none"
    asha_grace_period: int = 1
    asha_reduction_factor: int = 2

    @classmethod
    def measured(cls, calibration: Calibration) -> Study:
        """The calibration's own grid, sizes and machine."""
        return cls(
            label="measured",
            grid_size=calibration.grid_size,
            epochs=calibration.epochs,
            train_volumes=calibration.train_volumes,
            val_volumes=calibration.val_volumes,
            batch_size_per_replica=calibration.batch_size_per_replica,
        )

    def epochs_per_trial(self) -> list[int]:
        if self.scheduler == "asha":
            return asha_epochs(
                self.grid_size, self.epochs, self.asha_grace_period, self.asha_reduction_factor
            )
        return [self.epochs] * self.grid_size


def asha_epochs(grid_size: int, max_t: int, grace_period: int, reduction_factor: int) -> list[int]:
    """Epochs each configuration trains under ASHA, in grid order.

    ASHA's rungs sit at ``grace_period × reduction_factor^i`` epochs below ``max_t``; at each,
    the best ``1 / reduction_factor`` of the trials that reached it go on. Which trials lead
    cannot be known before training, so the model keeps ``ceil(n / rf^(i+1))`` trials past
    rung ``i`` and lets grid order stand for rank: the earliest go on (asynchronous rungs
    promote early arrivals most readily, as they meet the fewest rivals).
    """
    if min(grid_size, max_t, grace_period) < 1 or reduction_factor < 2:
        raise ValueError(
            f"ASHA needs grid, max_t, grace >= 1 and reduction_factor >= 2; got {grid_size}, "
            f"{max_t}, {grace_period}, {reduction_factor}"
        )
    epochs = [max_t] * grid_size
    rung, level = grace_period, 0
    while rung < max_t:
        level += 1
        going_on = math.ceil(grid_size / reduction_factor**level)
        for index in range(going_on, grid_size):
            epochs[index] = min(epochs[index], rung)
        rung *= reduction_factor
    return epochs


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
    *,
    study: Study | None = None,
    gpus_per_node: int = DEFAULT_GPUS_PER_NODE,
    inter_node_bandwidth: float | None = None,
    intra_node_bandwidth: float | None = None,
    allreduce_latency_seconds: float | None = None,
    epochs_per_trial: Sequence[int] | None = None,
) -> Prediction:
    """The makespan of ``study`` (default: the calibration's own) in ``mode`` on ``gpus``
    GPUs (module docstring).

    ``k``: hybrid mode's GPUs per trial (2 <= k, k divides G). ``inter_node_bandwidth`` /
    ``intra_node_bandwidth`` (bytes per second) and ``allreduce_latency_seconds`` replace
    the fitted ring's (a projection's defaults are the ``GPU_*`` constants).
    ``epochs_per_trial``: epochs each configuration trains, grid order (e.g. a measured ASHA
    run's ``MeasuredRun.epochs_per_trial``); default the study's.
    """
    study = study or Study.measured(calibration)
    workers = _workers_per_trial(mode, gpus, k)
    epochs = _epochs(study, epochs_per_trial)
    plan = _Plan(
        calibration,
        study,
        gpus_per_node,
        inter_node_bandwidth,
        intra_node_bandwidth,
        allreduce_latency_seconds,
    )
    slots = gpus // workers
    baseline_mode = modes.get(mode).baseline
    baseline, _ = plan.schedule(baseline_mode, 1, 1, epochs)
    # Last, so the assumptions noted (busy workers, steps, parts) are this prediction's.
    schedule, trial_seconds = plan.schedule(mode, workers, slots, epochs)
    plan.note("study", study.label, "flag" if study.label != "measured" else "config")
    plan.note("epochs_per_trial", list(epochs), "flag" if epochs_per_trial else "config")
    plan.note("gpus", gpus, "flag")
    plan.note("gpus_per_node", gpus_per_node, "flag")
    plan.note("workers_per_trial", workers, "flag" if modes.get(mode).takes_k else "config")
    plan.note("concurrent_trials", slots, "config")
    plan.note("speedup_baseline", f"{baseline_mode} at G=1", "config")
    return Prediction(
        mode=mode,
        gpus=gpus,
        workers_per_trial=workers,
        concurrent_trials=slots,
        makespan_seconds=schedule.makespan_seconds,
        baseline_makespan_seconds=baseline.makespan_seconds,
        trial_seconds=tuple(trial_seconds),
        schedule=schedule,
        assumptions=plan.assumptions,
    )


def validate(prediction: Prediction, measured_makespan: float) -> float:
    """Relative error of the prediction: ``(predicted - measured) / measured``."""
    if measured_makespan <= 0:
        raise ValueError(f"measured makespan must be > 0, got {measured_makespan}")
    return (prediction.makespan_seconds - measured_makespan) / measured_makespan


def _workers_per_trial(mode: str, gpus: int, k: int | None) -> int:
    try:
        spec = modes.get(mode)
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    if gpus < 1:
        raise ValueError(f"gpus must be >= 1, got {gpus}")
    if spec.takes_k:
        problem = spec.k_problem(gpus, k)
        if problem:
            raise ValueError(problem)
        return spec.workers_per_trial(gpus, k)
    implied = spec.workers_per_trial(gpus)
    if k is not None and k != implied:
        raise ValueError(f"{mode} mode on G = {gpus} has {implied} GPUs per trial, got k = {k}")
    return implied


def _epochs(study: Study, epochs_per_trial: Sequence[int] | None) -> list[int]:
    if epochs_per_trial is None:
        return study.epochs_per_trial()
    epochs = [int(e) for e in epochs_per_trial]
    if len(epochs) != study.grid_size:
        raise ValueError(
            f"epochs_per_trial needs one entry per configuration ({study.grid_size}), "
            f"got {len(epochs)}"
        )
    if any(not 1 <= e <= study.epochs for e in epochs):
        raise ValueError(f"epochs_per_trial must lie in 1..{study.epochs}, got {epochs}")
    return epochs


class _Plan:
    """The per-trial arithmetic, noting every number it uses in ``assumptions``."""

    def __init__(
        self,
        calibration: Calibration,
        study: Study,
        gpus_per_node: int,
        inter_node_bandwidth: float | None,
        intra_node_bandwidth: float | None,
        allreduce_latency_seconds: float | None,
    ) -> None:
        if gpus_per_node < 1:
            raise ValueError(f"gpus_per_node must be >= 1, got {gpus_per_node}")
        if study.step_seconds is not None and study.step_seconds <= 0:
            raise ValueError(f"a study's step_seconds must be > 0, got {study.step_seconds}")
        self.calibration = calibration
        self.study = study
        self.gpus_per_node = gpus_per_node
        self.assumptions: dict[str, dict[str, Any]] = {}
        self.projected = study.step_seconds is not None
        for name in ("grid_size", "epochs", "train_volumes", "val_volumes"):
            self.note(name, getattr(study, name), "flag" if self.projected else "config")
        self.note("batch_size_per_replica", study.batch_size_per_replica, "config")
        self.note("parameter_count", calibration.parameter_count, "config")
        self._ring(inter_node_bandwidth, intra_node_bandwidth, allreduce_latency_seconds)

    def _ring(self, inter: float | None, intra: float | None, latency: float | None) -> None:
        c = self.calibration
        ring = fit_ring(c.allreduce_seconds, c.parameter_bytes)
        self.note("allreduce_formula", RING_FORMULA, "config")
        self.note(
            "allreduce_measured_seconds",
            {str(w): s for w, s in sorted(c.allreduce_seconds.items())},
            "measured",
        )
        if self.projected:
            # The measured points are of the measuring machine's link, not the target's.
            defaults = (GPU_INTRA_NODE_BANDWIDTH, GPU_INTER_NODE_BANDWIDTH)
            self.intra_bandwidth, self.inter_bandwidth = defaults
            self.latency = GPU_ALLREDUCE_LATENCY_SECONDS
            fitted_source = "default"
            detail = "assumed for the target GPUs (NVLink-class within a node)"
        else:
            self.intra_bandwidth = self.inter_bandwidth = ring.bandwidth
            self.latency = ring.latency_seconds
            fitted_source = ring.source
            detail = f"fitted to {ring.points} measured points (None: no per-byte cost)"
        sources = {"intra": fitted_source, "inter": fitted_source, "latency": fitted_source}
        if intra is not None:
            self.intra_bandwidth, sources["intra"] = intra, "flag"
        if inter is not None:
            self.inter_bandwidth, sources["inter"] = inter, "flag"
        if latency is not None:
            self.latency, sources["latency"] = latency, "flag"
        self.note(
            "allreduce_bandwidth",
            _finite(self.intra_bandwidth),
            sources["intra"],
            f"bytes/s within a node, {detail}",
        )
        self.note(
            "inter_node_bandwidth",
            _finite(self.inter_bandwidth),
            sources["inter"],
            "bytes/s, a ring across nodes"
            + ("" if inter is not None or self.projected else ": as fast as within one"),
        )
        self.note("allreduce_latency_seconds", self.latency, sources["latency"], "per log2(w)")

    def note(self, name: str, value: Any, source: str, detail: str = "") -> None:
        self.assumptions[name] = {"value": value, "source": source, "detail": detail}

    def _from_calibration(self, name: str, value: Any, key: str | None = None) -> Any:
        kind, _, detail = self.calibration.source(key or name).partition(":")
        self.note(name, value, kind.strip(), detail.strip())
        return value

    def step_seconds(self, busy: int) -> tuple[float, float]:
        """Training and validation step with ``busy`` workers on a node."""
        c = self.calibration
        alone = c.step_seconds[min(c.step_seconds)]  # the fewest busy workers measured
        if self.projected:
            step = self.study.step_seconds
            val_step = c.val_step_seconds * step / alone
            self.note("step_seconds", step, "flag", "the target device's step replaces it")
            self.note("val_step_seconds", val_step, "flag", "measured val step x step ratio")
            return step, val_step
        step, measured_at = c.step_at(busy)
        slowdown = step / alone
        self._from_calibration(f"step_seconds[{busy}]", step, f"step_seconds[{measured_at}]")
        self.note("step_seconds", step, "measured", f"at {measured_at} busy per node")
        val_step = self._from_calibration(
            "val_step_seconds", c.val_step_seconds * slowdown, "val_step_seconds"
        )
        return step, val_step

    def allreduce_seconds(self, workers: int) -> float:
        across = workers > self.gpus_per_node
        bandwidth = self.inter_bandwidth if across else self.intra_bandwidth
        seconds = ring_allreduce_seconds(
            workers, self.calibration.parameter_bytes, bandwidth, self.latency
        )
        where = "across nodes" if across else "within a node"
        self.note(f"allreduce_seconds[{workers}]", seconds, "config", f"ring formula, {where}")
        return seconds

    def epoch_seconds(self, mode: str, workers: int, busy: int) -> float:
        study = self.study
        batch = study.batch_size_per_replica
        steps = max(1, math.ceil(study.train_volumes / (batch * workers)))
        val_steps = math.ceil(study.val_volumes / (batch * workers)) if study.val_volumes else 0
        step, val_step = self.step_seconds(busy)
        gap = self.part(mode, busy, "epoch_gap_seconds")
        self.note(f"steps_per_epoch[{workers}]", steps, "config", "ceil(train / (batch x w))")
        self.note(f"val_steps[{workers}]", val_steps, "config", "ceil(val / (batch x w))")
        return steps * (step + self.allreduce_seconds(workers)) + val_steps * val_step + gap

    def part(self, mode: str, busy: int, name: str) -> float:
        """A part of ``mode``'s makespan with ``busy`` workers training per node."""
        value, source = self.calibration.part(mode, busy, name)
        kind, _, detail = source.partition(":")
        self.note(f"{mode}.{name}", value, kind.strip(), detail.strip())
        return value

    def trial_seconds(self, mode: str, workers: int, busy: int, epochs: Sequence[int]) -> list:
        epoch = self.epoch_seconds(mode, workers, busy)
        fixed = (
            self.part(mode, busy, "first_epoch_extra_seconds")
            - self.part(mode, busy, "epoch_gap_seconds")
            + self.part(mode, busy, "finish_seconds")
        )
        first, later = (
            self.part(mode, busy, "first_startup_seconds"),
            self.part(mode, busy, "startup_seconds"),
        )
        return [(first if i == 0 else later) + fixed + e * epoch for i, e in enumerate(epochs)]

    def schedule(
        self, mode: str, workers: int, slots: int, epochs: Sequence[int]
    ) -> tuple[Schedule, list[float]]:
        """The trials of ``mode`` on ``slots`` slots of ``workers`` each, set-up and
        teardown included (shifted by the set-up; the makespan adds the teardown), and
        each trial's seconds."""
        busy = min(min(len(epochs), slots) * workers, self.gpus_per_node)
        self.note("busy_workers_per_node", busy, "config", "min(trials at once x w, per node)")
        durations = self.trial_seconds(mode, workers, busy, epochs)
        placed = simulate(
            durations,
            slots,
            self.part(mode, busy, "relaunch_seconds"),
            self.part(mode, busy, "first_wave_spread_seconds"),
        )
        setup = self.part(mode, busy, "setup_seconds")
        teardown = self.part(mode, busy, "teardown_seconds")
        schedule = Schedule(
            start_seconds=tuple(setup + s for s in placed.start_seconds),
            end_seconds=tuple(setup + e for e in placed.end_seconds),
            slot=placed.slot,
            slots=slots,
            teardown_seconds=teardown,
        )
        return schedule, durations


def _finite(value: float) -> float | None:
    return None if math.isinf(value) else value
