"""The measured numbers a makespan prediction is built from, for one backend on one machine:
the runs' own calibrations (:mod:`distmis.plan.measure`) merged, and ``calibration_<backend>.json``.

:meth:`Calibration.from_runs` merges the run calibrations of one backend at one shape and
batch:

- ``step_seconds[b]``: a training step of a one-worker trial (experiment mode, data mode at
  G = 1) while ``b`` workers train at once on its node; the slowdown from ``b = 1`` is what a
  node's shared CPUs, memory bandwidth and PCIe cost. Median over the runs at that ``b``.
- ``allreduce_seconds[w]``: what a step at ``w`` workers (data at G = w, hybrid k = w) costs
  beyond a one-worker step at the same ``b``: the gradient all-reduce (and the ranks waiting
  for each other), floored at 0.
- ``val_step_seconds``: one validation step (batch ``batch_size_per_replica``) of a one-worker
  trial at the smallest ``b``: a validation pass at ``w`` workers is
  ``ceil(val_volumes / (batch x w))`` of them.
- ``parts[mode][b]``: the run-level parts of each mode (set-up, relaunch, start-ups,
  first-epoch extra, epoch gap, finish, teardown; :mod:`distmis.plan.measure`), medians over
  its runs at ``b`` busy per node. Only what was measured is kept; :meth:`Calibration.part`
  resolves the rest (:mod:`distmis.plan.parts`: composed from the other modes, a stand-in,
  or a default) and says which.
- the sizes that turn them into epochs and runs: training and validation volumes (what the
  runs trained on, recorded in their ``summary.json``), batch, epochs, grid size, parameters.

``calibration_<backend>.json`` is :meth:`Calibration.to_json` (format
``distmis-calibration/2``; :meth:`Calibration.from_json` refuses a missing or unknown key).
A source (``sources[name]``) reads ``<kind>: <how>``, kind ``measured``, ``config`` or
``default``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from distmis import modes
from distmis.errors import ContractError
from distmis.fileio import read_json, versioned_fields, write_json
from distmis.plan.measure import RunCalibration, measure_run
from distmis.plan.parts import DEFAULT_PARTS, Parts, measured_parts, resolve

CALIBRATION_FORMAT = "distmis-calibration/2"
MADE_BY = "distmis plan (Calibration.from_runs)"
# The U-Net of config.yaml (depth 3, base 8 filters, 4 input channels, 1 output); Keras'
# count, which torch's count_parameters matches.
UNET_PARAMETERS = 403_233
FLOAT32_BYTES = 4


@dataclass(frozen=True)
class Calibration:
    """See the module docstring for every field's meaning and unit."""

    backend: str
    hardware: str
    step_seconds: Mapping[int, float]
    allreduce_seconds: Mapping[int, float]
    val_step_seconds: float
    parts: Parts
    train_volumes: int
    val_volumes: int
    batch_size_per_replica: int
    epochs: int
    grid_size: int
    parameter_count: int = UNET_PARAMETERS
    sources: Mapping[str, str] = field(default_factory=dict)
    runs: tuple[str, ...] = ()

    def part(self, mode: str, busy_per_node: int, name: str) -> tuple[float, str]:
        """A run-level part and its source (:func:`distmis.plan.parts.resolve`)."""
        value, source = resolve(self.parts, mode, busy_per_node, name)
        if source.startswith("measured: " + mode):
            labels = self.sources.get(f"parts.{mode}", "")
            source += f" ({labels})" if labels else ""
        return value, source

    def step_at(self, busy_per_node: int) -> tuple[float, int]:
        """:func:`step_at` of this calibration's one-worker steps."""
        return step_at(self.step_seconds, busy_per_node)

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
    ) -> Calibration:
        """Merge the calibrations of finished runs (each measured from its files,
        :func:`~distmis.plan.measure.measure_run`) of one backend at one shape, batch, epochs
        and grid."""
        return cls.merge(
            [measure_run(Path(d)) for d in run_dirs],
            train_volumes=train_volumes,
            val_volumes=val_volumes,
            parameter_count=parameter_count,
        )

    @classmethod
    def merge(
        cls,
        runs: Sequence[RunCalibration],
        *,
        train_volumes: int | None = None,
        val_volumes: int | None = None,
        parameter_count: int = UNET_PARAMETERS,
    ) -> Calibration:
        """:meth:`from_runs` on run calibrations already read (a planner merging several
        subsets of the same runs reads each once)."""
        if not runs:
            raise ValueError("a calibration needs at least one run folder")
        sizes = _sizes(runs, train_volumes, val_volumes)
        shape = _common_shape(runs)
        sources: dict[str, str] = {
            "batch_size_per_replica": "config: settings of the runs",
            "epochs": "config: settings of the runs",
            "grid_size": "config: trial_count of the runs",
            "parameter_count": "config: U-Net depth 3, base 8, 4 channels in, 1 out"
            if parameter_count == UNET_PARAMETERS
            else "config: given",
            **sizes["sources"],
        }
        single = [r for r in runs if r.workers_per_trial == 1 and r.step_seconds is not None]
        if not single:
            raise ValueError(
                "a calibration needs a finished run with one worker per trial (experiment "
                f"mode, or data mode at G=1); got {[r.path for r in runs]}: add experiment "
                "to train.modes or 1 to train.gpu_counts, and train"
            )
        step_seconds = _by_busy(single, "step_seconds", sources, "step_seconds")
        allreduce = _allreduce(runs, step_seconds, sources)
        val_step = _val_step(single, shape["batch_size_per_replica"], sizes, sources)
        return cls(
            backend=shape["backend"],
            hardware=", ".join(sorted({r.hardware for r in runs})),
            step_seconds=step_seconds,
            allreduce_seconds=allreduce,
            val_step_seconds=val_step,
            parts=_parts(runs, sources),
            train_volumes=sizes["train_volumes"],
            val_volumes=sizes["val_volumes"],
            batch_size_per_replica=shape["batch_size_per_replica"],
            epochs=shape["epochs"],
            grid_size=shape["grid_size"],
            parameter_count=parameter_count,
            sources=sources,
            runs=tuple(r.path for r in runs),
        )

    def to_json(self) -> dict[str, Any]:
        payload = asdict(self)
        for name in ("step_seconds", "allreduce_seconds"):
            payload[name] = {str(k): v for k, v in sorted(getattr(self, name).items())}
        payload["parts"] = {
            mode: {str(b): dict(values) for b, values in sorted(by_busy.items())}
            for mode, by_busy in self.parts.items()
        }
        payload["sources"] = dict(self.sources)
        payload["runs"] = list(self.runs)
        return {"format": CALIBRATION_FORMAT, **payload}

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> Calibration:
        """The inverse of :meth:`to_json`; a missing or unknown key is an error, not a default."""
        values = versioned_fields(payload, CALIBRATION_FORMAT, {f.name for f in fields(cls)})
        for name in ("step_seconds", "allreduce_seconds"):
            values[name] = {int(k): float(v) for k, v in values[name].items()}
        values["parts"] = {
            mode: {int(b): {p: float(v) for p, v in parts.items()} for b, parts in by_busy.items()}
            for mode, by_busy in values["parts"].items()
        }
        unknown = {p for by_busy in values["parts"].values() for x in by_busy.values() for p in x}
        if unknown - set(DEFAULT_PARTS):
            raise ValueError(f"calibration: unknown parts {sorted(unknown - set(DEFAULT_PARTS))}")
        values["sources"] = dict(values["sources"])
        values["runs"] = tuple(values["runs"])
        return cls(**values)

    def write(self, path: Path) -> None:
        """Write ``calibration_<backend>.json`` whole (temp file, then rename)."""
        write_json(path, self.to_json())

    @classmethod
    def read(cls, path: Path) -> Calibration:
        payload = read_json(path, MADE_BY)
        try:
            return cls.from_json(payload)
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise ContractError(f"{path}: {exc}; rewrite it with {MADE_BY}") from exc


def step_at(step_seconds: Mapping[int, float], busy_per_node: int) -> tuple[float, int]:
    """The one-worker step with ``busy_per_node`` workers training on its node, and the busy
    count it was measured at: that one, else the largest measured below it (more workers
    contend at least as much), else the smallest measured."""
    measured = sorted(step_seconds)
    below = [b for b in measured if b <= busy_per_node]
    busy = below[-1] if below else measured[0]
    return step_seconds[busy], busy


def _common_shape(runs: Sequence[RunCalibration]) -> dict[str, Any]:
    """Backend, epochs, batch and grid size, which every run of a calibration must share."""
    shape: dict[str, Any] = {}
    for name in ("backend", "epochs", "batch_size_per_replica", "grid_size"):
        values = {getattr(r, name) for r in runs}
        if len(values) != 1:
            listed = ", ".join(f"{r.path}: {getattr(r, name)}" for r in runs)
            raise ValueError(f"a calibration's runs must share {name}; got {listed}")
        shape[name] = values.pop()
    return shape


def _label(run: RunCalibration) -> str:
    k = f" k={run.workers_per_trial}" if modes.get(run.mode).takes_k else ""
    return f"{run.mode}{k} G={run.gpus}"


def _by_busy(
    runs: Sequence[RunCalibration], part: str, sources: dict[str, str], name: str
) -> dict[int, float]:
    """Median of ``part`` per busy-workers-per-node count, with a source per count."""
    table: dict[int, float] = {}
    for busy in sorted({r.busy_workers_per_node for r in runs}):
        at = [r for r in runs if r.busy_workers_per_node == busy]
        table[busy] = statistics.median(getattr(r, part) for r in at)
        sources[f"{name}[{busy}]"] = (
            f"measured: median of {len(at)} runs ({', '.join(_label(r) for r in at)}), "
            f"{busy} worker(s) busy per node"
        )
    return table


def _allreduce(
    runs: Sequence[RunCalibration], step_seconds: Mapping[int, float], sources: dict[str, str]
) -> dict[int, float]:
    """Per worker count w >= 2, the step at w minus the one-worker step at the same busy
    count (median over the runs at w)."""
    by_workers: dict[int, list[tuple[float, str]]] = {}
    for run in runs:
        if run.workers_per_trial < 2 or run.step_seconds is None:
            continue
        one_worker, _ = step_at(step_seconds, run.busy_workers_per_node)
        extra = max(0.0, run.step_seconds - one_worker)
        by_workers.setdefault(run.workers_per_trial, []).append((extra, _label(run)))
    allreduce = {}
    for workers, points in sorted(by_workers.items()):
        allreduce[workers] = statistics.median(p for p, _ in points)
        sources[f"allreduce_seconds[{workers}]"] = (
            f"measured: step at {workers} workers minus a one-worker step at the same busy "
            f"count, median of {len(points)} runs ({', '.join(label for _, label in points)})"
        )
    sources["allreduce_seconds"] = (
        f"measured at {sorted(allreduce)} workers" if allreduce else "measured: none"
    )
    return allreduce


def _val_step(
    single: Sequence[RunCalibration],
    batch: int,
    sizes: Mapping[str, Any],
    sources: dict[str, str],
) -> float:
    """One validation step, from the one-worker runs at the fewest busy workers per node."""
    timed = [r for r in single if r.val_seconds is not None]
    if not timed or not sizes["val_volumes"]:
        sources["val_step_seconds"] = "default: validation not timed apart (older runs)"
        return 0.0
    fewest = min(r.busy_workers_per_node for r in timed)
    at = [r for r in timed if r.busy_workers_per_node == fewest]
    val_steps = math.ceil(sizes["val_volumes"] / batch)
    sources["val_step_seconds"] = (
        f"measured: validation pass / {val_steps} steps, median of {len(at)} runs "
        f"({', '.join(_label(r) for r in at)})"
    )
    return statistics.median(r.val_seconds for r in at) / val_steps


def _parts(runs: Sequence[RunCalibration], sources: dict[str, str]) -> dict:
    """The measured parts per mode and busy count; ``sources["parts.<mode>"]`` names the runs."""
    parts, labels = measured_parts(runs)
    for mode in parts:
        sources[f"parts.{mode}"] = "; ".join(
            f"at {key.split('.')[1]} busy: {label}"
            for key, label in labels.items()
            if key.startswith(mode + ".")
        )
    return parts


def _sizes(
    runs: Sequence[RunCalibration], train_volumes: int | None, val_volumes: int | None
) -> dict[str, Any]:
    """Training and validation volumes: given, else what the first run trained on (the split
    sizes its summary.json records, from its data's info.json)."""
    sources = {}
    for name, given in (("train_volumes", train_volumes), ("val_volumes", val_volumes)):
        sources[name] = (
            "config: given"
            if given is not None
            else f"config: info.json of the data of {runs[0].path}"
        )
    train = train_volumes if train_volumes is not None else runs[0].train_volumes
    val = val_volumes if val_volumes is not None else runs[0].val_volumes
    return {"train_volumes": train, "val_volumes": val, "sources": sources}
