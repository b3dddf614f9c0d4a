"""The measured numbers a makespan prediction is built from, and ``calibration.json``.

:class:`Calibration` holds, for one backend on one machine at one shape and batch: the
seconds of a training step and of a validation pass on one worker, the start-ups each mode
pays, the all-reduce seconds per step measured at each worker count, and the sizes (training
volumes, batch, epochs, grid) that turn them into epochs and runs. :meth:`Calibration.from_runs`
derives every number from finished training runs (:mod:`distmis.plan.runs`) and records in
``sources`` where each came from.

``calibration.json`` (:meth:`Calibration.to_json`; :meth:`Calibration.from_json` refuses a
missing or unknown key)::

    {
      "format": "distmis-calibration/1",
      "backend": "torch",                      # the framework that trained
      "hardware": "CPU:x86_64",                # devices the runs saw, ", "-joined
      "step_seconds": 1.5,                     # one training step, one worker, batch below
      "val_seconds": 0.5,                      # one validation pass over the val split, 1 worker
      "trial_startup_seconds": 5.0,            # a Tune trial: asked for -> first epoch
      "group_startup_seconds": 13.0,           # a Ray Train worker group: fit() -> first epoch
      "config_startup_seconds": 0.6,           # data mode: next configuration in the group
      "allreduce_seconds": {"2": 0.25, "4": 0.5},  # per step, by worker count (JSON keys)
      "train_volumes": 8,                      # training split
      "batch_size_per_replica": 2,
      "epochs": 2,
      "grid_size": 2,                          # configurations in the grid
      "parameter_count": 403233,               # float32 parameters all-reduced each step
      "sources": {"step_seconds": "measured: ...", ...},  # "<kind>: <how>" per number
      "runs": ["results/train/torch/experiment/1gpu", ...]
    }

A source's kind (before the colon) is ``measured`` (from a run's timings), ``config`` (a
property of the configured data or settings) or ``default`` (a constant of this module).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from distmis.errors import ContractError
from distmis.fileio import read_json, write_json
from distmis.plan.runs import MeasuredRun, MeasuredTrial, read_run

CALIBRATION_FORMAT = "distmis-calibration/1"
MADE_BY = "distmis plan (Calibration.from_runs)"
# The U-Net of config.yaml (depth 3, base 8 filters, 4 input channels, 1 output); Keras'
# count, which torch's count_parameters matches.
UNET_PARAMETERS = 403_233
FLOAT32_BYTES = 4
# A validation step is a forward pass only: about a third of a training step's forward,
# backward and update. Runs do not time validation apart from training, so this splits an
# epoch's measured seconds between the two.
VALIDATION_STEP_FRACTION = 1.0 / 3.0
# Used only when no run recorded a start-up (runs from before startup_seconds existed).
DEFAULT_STARTUP_SECONDS = 10.0  # a Ray worker process: start, framework import, model, data
DEFAULT_CONFIG_STARTUP_SECONDS = 1.0  # data mode: a new model and input pipeline, same group

NUMBERS = (
    "step_seconds",
    "val_seconds",
    "trial_startup_seconds",
    "group_startup_seconds",
    "config_startup_seconds",
    "allreduce_seconds",
    "train_volumes",
    "batch_size_per_replica",
    "epochs",
    "grid_size",
    "parameter_count",
)


@dataclass(frozen=True)
class Calibration:
    """See the module docstring for every field's meaning and unit."""

    backend: str
    hardware: str
    step_seconds: float
    val_seconds: float
    trial_startup_seconds: float
    group_startup_seconds: float
    config_startup_seconds: float
    allreduce_seconds: Mapping[int, float]
    train_volumes: int
    batch_size_per_replica: int
    epochs: int
    grid_size: int
    parameter_count: int = UNET_PARAMETERS
    sources: Mapping[str, str] = field(default_factory=dict)
    runs: tuple[str, ...] = ()

    def steps_per_epoch(self, workers: int) -> int:
        """``ceil(train_volumes / (batch_size_per_replica × workers))``, as both backends."""
        return max(1, math.ceil(self.train_volumes / (self.batch_size_per_replica * workers)))

    @property
    def parameter_bytes(self) -> int:
        return self.parameter_count * FLOAT32_BYTES

    def source(self, name: str) -> str:
        """Where ``name`` came from (``"config"`` when nothing was recorded)."""
        return self.sources.get(name, "config")

    @classmethod
    def from_runs(
        cls,
        run_dirs: Iterable[Path],
        *,
        train_volumes: int | None = None,
        val_volumes: int | None = None,
        parameter_count: int = UNET_PARAMETERS,
        validation_step_fraction: float = VALIDATION_STEP_FRACTION,
    ) -> Calibration:
        """Derive a calibration from finished runs of one backend at one shape and batch.

        The runs must agree on backend, epochs, batch size per replica and grid size. Only
        trials that finished (``ok``, with ``result.json``) are timed; every figure below is
        a median over trials, which a straggler does not move.

        - Epoch seconds of a trial: ``fit_seconds / epochs trained`` (result.json; includes
          validation, the per-epoch checkpoint and the first epoch's warm-up).
        - Sizes: ``train_volumes``/``val_volumes`` as given, else the run's
          ``<tfrecord_dir>/info.json`` counts, else training volumes as ``steps_per_epoch ×
          global_batch_size`` of a one-worker trial (an upper bound) and no validation
          share (``val_seconds`` 0: validation stays inside the step time).
        - ``step_seconds`` (one worker): from the one-worker runs (experiment mode, data at
          G=1) with the fewest trials at once, so no neighbour shares the machine. An epoch
          is ``steps × s + val_steps × f × s`` with ``val_steps = ceil(val_volumes /
          batch)`` and ``f`` = ``validation_step_fraction``, so ``s = epoch / (steps + f ×
          val_steps)`` and ``val_seconds = val_steps × f × s``.
        - ``allreduce_seconds[w]`` for each worker count w >= 2 (data at G=w, hybrid k=w),
          again from its runs with the fewest trials at once: the step time there,
          ``(epoch - val_seconds / w) / steps_per_epoch(w)``, minus ``step_seconds``
          (each worker still steps on its own batch), floored at 0.
        - ``trial_startup_seconds``: experiment trials' ``startup_seconds``.
          ``group_startup_seconds``: data runs' first configuration (its start-up counts
          from the driver's ``fit()``) and hybrid trials (each starts a Train worker
          group). ``config_startup_seconds``: data runs' later configurations. Where a mode
          was not run, the other start-up stands in (said in ``sources``), and without any
          :data:`DEFAULT_STARTUP_SECONDS` / :data:`DEFAULT_CONFIG_STARTUP_SECONDS`.
        """
        paths = [Path(d) for d in run_dirs]
        if not paths:
            raise ValueError("a calibration needs at least one run folder")
        runs = [read_run(p) for p in paths]
        shape = _common_shape(runs)
        sources: dict[str, str] = {
            "batch_size_per_replica": "config: settings of the runs",
            "epochs": "config: settings of the runs",
            "grid_size": "config: trial_count of the runs",
            "parameter_count": "config: U-Net depth 3, base 8, 4 channels in, 1 out"
            if parameter_count == UNET_PARAMETERS
            else "config: given",
        }
        by_workers = _timed_trials_by_workers(runs)
        if 1 not in by_workers:
            raise ValueError(
                "a calibration needs a finished run with one worker per trial (experiment "
                f"mode, or data mode at G=1); got {[str(p) for p in paths]}"
            )
        single, single_label = by_workers[1]
        batch = shape["batch_size_per_replica"]
        train_volumes, val_volumes = _sizes(runs, single, train_volumes, val_volumes, sources)
        val_steps = math.ceil(val_volumes / batch) if val_volumes else 0
        share = validation_step_fraction * val_steps
        step_seconds = statistics.median(
            t.epoch_seconds / (t.steps_per_epoch + share) for t in single
        )
        val_seconds = share * step_seconds
        sources["step_seconds"] = f"measured: median of {len(single)} trials ({single_label})"
        sources["val_seconds"] = (
            f"measured: {val_steps} val steps x {validation_step_fraction:.3g} of a step"
            if val_steps
            else "default: not timed apart; validation stays inside step_seconds"
        )
        allreduce: dict[int, float] = {}
        for workers, (trials, label) in sorted(by_workers.items()):
            if workers == 1:
                continue
            step_at_w = statistics.median(
                (t.epoch_seconds - val_seconds / workers) / t.steps_per_epoch for t in trials
            )
            allreduce[workers] = max(0.0, step_at_w - step_seconds)
            sources[f"allreduce_seconds[{workers}]"] = (
                f"measured: step at {workers} workers minus step at 1, median of "
                f"{len(trials)} trials ({label})"
            )
        sources["allreduce_seconds"] = (
            f"measured at {sorted(allreduce)} workers" if allreduce else "measured: none"
        )
        startups = _startups(runs, sources)
        return cls(
            backend=shape["backend"],
            hardware=", ".join(sorted({d for r in runs for d in r.devices_seen})) or "unknown",
            step_seconds=step_seconds,
            val_seconds=val_seconds,
            allreduce_seconds=allreduce,
            train_volumes=train_volumes,
            batch_size_per_replica=batch,
            epochs=shape["epochs"],
            grid_size=shape["grid_size"],
            parameter_count=parameter_count,
            sources=sources,
            runs=tuple(str(p) for p in paths),
            **startups,
        )

    def to_json(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["allreduce_seconds"] = {
            str(w): s for w, s in sorted(self.allreduce_seconds.items())
        }
        payload["sources"] = dict(self.sources)
        payload["runs"] = list(self.runs)
        return {"format": CALIBRATION_FORMAT, **payload}

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> Calibration:
        """The inverse of :meth:`to_json`; a missing or unknown key is an error, not a default."""
        names = {f.name for f in fields(cls)} | {"format"}
        if set(payload) != names or payload["format"] != CALIBRATION_FORMAT:
            raise ValueError(
                f"calibration: expected format {CALIBRATION_FORMAT!r}, got "
                f"{payload.get('format')!r}; missing {sorted(names - set(payload))}, "
                f"unknown {sorted(set(payload) - names)}"
            )
        values = {k: v for k, v in payload.items() if k != "format"}
        values["allreduce_seconds"] = {
            int(w): float(s) for w, s in values["allreduce_seconds"].items()
        }
        values["sources"] = dict(values["sources"])
        values["runs"] = tuple(values["runs"])
        return cls(**values)

    def write(self, path: Path) -> None:
        """Write ``calibration.json`` whole (temp file, then rename)."""
        write_json(path, self.to_json())

    @classmethod
    def read(cls, path: Path) -> Calibration:
        payload = read_json(path, MADE_BY)
        try:
            return cls.from_json(payload)
        except (ValueError, TypeError, AttributeError) as exc:
            raise ContractError(f"{path}: {exc}; rewrite it with {MADE_BY}") from exc


def _common_shape(runs: Sequence[MeasuredRun]) -> dict[str, Any]:
    """Backend, epochs, batch and grid size, which every run of a calibration must share."""
    shape: dict[str, Any] = {}
    for name in ("backend", "epochs", "batch_size_per_replica", "grid_size"):
        values = {getattr(r, name) for r in runs}
        if len(values) != 1:
            listed = ", ".join(f"{r.path}: {getattr(r, name)}" for r in runs)
            raise ValueError(f"a calibration's runs must share {name}; got {listed}")
        shape[name] = values.pop()
    return shape


def _timed(run: MeasuredRun) -> list[MeasuredTrial]:
    return [t for t in run.trials if t.epoch_seconds is not None and t.steps_per_epoch]


def _timed_trials_by_workers(
    runs: Sequence[MeasuredRun],
) -> dict[int, tuple[list[MeasuredTrial], str]]:
    """Per worker count, the timed trials of its runs with the fewest trials at once, and a
    label naming those runs."""
    chosen: dict[int, tuple[list[MeasuredTrial], str]] = {}
    for workers in sorted({r.workers_per_trial for r in runs}):
        candidates = [r for r in runs if r.workers_per_trial == workers and _timed(r)]
        if not candidates:
            continue
        fewest = min(r.concurrent_trials for r in candidates)
        picked = [r for r in candidates if r.concurrent_trials == fewest]
        trials = [t for r in picked for t in _timed(r)]
        chosen[workers] = (trials, ", ".join(_label(r) for r in picked))
    return chosen


def _label(run: MeasuredRun) -> str:
    k = f" k={run.workers_per_trial}" if run.mode == "hybrid" else ""
    return f"{run.mode}{k} G={run.gpus}"


def _sizes(
    runs: Sequence[MeasuredRun],
    single: Sequence[MeasuredTrial],
    train_volumes: int | None,
    val_volumes: int | None,
    sources: dict[str, str],
) -> tuple[int, int | None]:
    """Training and validation volumes: given, else info.json, else the one-worker trials."""
    counts = _info_counts(runs)
    if train_volumes is not None:
        sources["train_volumes"] = "config: given"
    elif counts is not None:
        train_volumes = counts["train"]
        sources["train_volumes"] = "config: info.json of the runs' tfrecord_dir"
    else:
        train_volumes = max(t.steps_per_epoch * t.global_batch_size for t in single)
        sources["train_volumes"] = "measured: steps_per_epoch x global batch (upper bound)"
    if val_volumes is None and counts is not None:
        val_volumes = counts["val"]
    return train_volumes, val_volumes


def _info_counts(runs: Sequence[MeasuredRun]) -> dict[str, int] | None:
    """Train and val counts of the first run whose ``tfrecord_dir`` still has info.json."""
    from distmis.data.info import DatasetInfo

    for run in runs:
        if run.tfrecord_dir and (Path(run.tfrecord_dir) / "info.json").is_file():
            info = DatasetInfo.from_dir(Path(run.tfrecord_dir))
            return {"train": info.count("train"), "val": info.count("val")}
    return None


def _startups(runs: Sequence[MeasuredRun], sources: dict[str, str]) -> dict[str, float]:
    """The three start-ups (see :meth:`Calibration.from_runs`), with their sources."""
    trial, group, config = [], [], []
    for run in runs:
        measured = [t.startup_seconds for t in run.trials if t.startup_seconds is not None]
        if run.mode == "experiment":
            trial += measured
        elif run.mode == "hybrid":
            group += measured
        elif measured:  # data: the trials are in start order, the first started the group
            group.append(measured[0])
            config += measured[1:]
    found = {}
    for name, values, what in (
        ("trial_startup_seconds", trial, "experiment trials"),
        ("group_startup_seconds", group, "data first configurations, hybrid trials"),
        ("config_startup_seconds", config, "data later configurations"),
    ):
        if values:
            found[name] = statistics.median(values)
            sources[name] = f"measured: median of {len(values)} ({what})"
    for name, proxy in (
        ("trial_startup_seconds", "group_startup_seconds"),
        ("group_startup_seconds", "trial_startup_seconds"),
    ):
        if name not in found and proxy in found:
            found[name] = found[proxy]
            sources[name] = f"measured: {proxy} stands in (mode not run)"
    for name, default in (
        ("trial_startup_seconds", DEFAULT_STARTUP_SECONDS),
        ("group_startup_seconds", DEFAULT_STARTUP_SECONDS),
        ("config_startup_seconds", DEFAULT_CONFIG_STARTUP_SECONDS),
    ):
        if name not in found:
            found[name] = default
            sources[name] = "default: no run recorded it"
    return found
