"""The run-level parts of a makespan per mode (:mod:`distmis.plan.measure`), and what stands in
for a part no run of that mode measured.

Measured parts are kept per mode and per busy-workers-per-node count ``b``: starting G worker
processes on a node, or a Train group's collective set-up, costs more when more start at once.
:func:`resolve` answers "this part, for this mode, with ``b`` busy per node":

1. measured in this mode: at ``b``, else the largest measured ``b`` below, else the smallest
   (a part measured at 2 busy is assumed unchanged at 4);
2. composed from the modes it is made of. A hybrid trial is a Ray Tune trial whose function
   starts a Ray Train group and runs a configuration in it, so: hybrid set-up = experiment
   set-up + data set-up; hybrid relaunch = experiment relaunch + data set-up; hybrid teardown
   = data teardown; a hybrid trial's start-up, first-epoch extra, epoch gap and finish = data
   mode's first configuration's (each hybrid group is fresh). Read backwards, a hybrid run
   gives experiment's set-up and relaunch (minus data's set-up) and data's set-up;
3. the same part of the nearest other mode (:data:`STAND_INS`);
4. :data:`DEFAULT_PARTS`.

The source says which (``measured: ...`` or ``default: ...``).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

from distmis import modes
from distmis.plan.measure import PARTS, RunCalibration

RUN_PARTS = tuple(p for p in PARTS if p not in ("step_seconds", "val_seconds"))
# Nearest first: experiment and hybrid trials are both Ray Tune trials; a data run is one Ray
# Train group, as each hybrid trial starts one.
STAND_INS = {
    "experiment": ("hybrid", "data"),
    "hybrid": ("data", "experiment"),
    "data": ("hybrid", "experiment"),
}
# Used only when no run of any mode measured a part (older runs, or a part a grid too small
# cannot show, such as relaunch when every trial had a slot of its own).
DEFAULT_PARTS = {
    "setup_seconds": 10.0,  # Ray Tune/Train set-up and the first worker processes
    "first_wave_spread_seconds": 0.0,  # the first wave starting at one instant
    "relaunch_seconds": 5.0,  # a new trial process
    "first_startup_seconds": 5.0,  # imports, data, model
    "startup_seconds": 5.0,
    "first_epoch_extra_seconds": 0.0,
    "epoch_gap_seconds": 0.0,
    "finish_seconds": 0.0,
    "teardown_seconds": 0.0,
}

# {mode: {busy: {part: seconds}}}; only what runs measured.
Parts = Mapping[str, Mapping[int, Mapping[str, float]]]


def measured_parts(runs: Sequence[RunCalibration]) -> tuple[dict, dict[str, str]]:
    """Median of each part per (mode, busy), over the runs that measured it, and a label
    naming those runs per ``"<mode>.<busy>"``."""
    parts: dict[str, dict[int, dict[str, float]]] = {}
    labels: dict[str, str] = {}
    for mode in modes.NAMES:
        for busy in sorted({r.busy_workers_per_node for r in runs if r.mode == mode}):
            at = [r for r in runs if r.mode == mode and r.busy_workers_per_node == busy]
            values = {}
            for part in RUN_PARTS:
                measured = [getattr(r, part) for r in at if getattr(r, part) is not None]
                if measured:
                    values[part] = statistics.median(measured)
            parts.setdefault(mode, {})[busy] = values
            labels[f"{mode}.{busy}"] = ", ".join(f"{r.mode} G={r.gpus}" for r in at)
    return parts, labels


def _own(parts: Parts, mode: str, busy: int, part: str) -> tuple[float, int] | None:
    """Step 1 of :func:`resolve`: the value and the busy count it was measured at."""
    measured = sorted(b for b, values in parts.get(mode, {}).items() if part in values)
    if not measured:
        return None
    below = [b for b in measured if b <= busy]
    at = below[-1] if below else measured[0]
    return parts[mode][at][part], at


def _composed(parts: Parts, mode: str, busy: int, part: str) -> float | None:
    """Step 2 of :func:`resolve` (module docstring), from measured values only."""

    def get(of: str, name: str) -> float | None:
        found = _own(parts, of, busy, name)
        return None if found is None else found[0]

    def plus(*values: float | None) -> float | None:
        return None if any(v is None for v in values) else sum(values)

    def minus(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else max(0.0, a - b)

    if mode == "hybrid":
        if part == "setup_seconds":
            return plus(get("experiment", "setup_seconds"), get("data", "setup_seconds"))
        if part == "relaunch_seconds":
            return plus(get("experiment", "relaunch_seconds"), get("data", "setup_seconds"))
        if part == "teardown_seconds":
            return get("data", "teardown_seconds")
        if part == "startup_seconds":
            return get("data", "first_startup_seconds")
        return get("data", part)
    if mode == "experiment" and part in ("setup_seconds", "relaunch_seconds"):
        return minus(get("hybrid", part), get("data", "setup_seconds"))
    if mode == "data" and part == "setup_seconds":
        return minus(get("hybrid", "setup_seconds"), get("experiment", "setup_seconds"))
    return None


def resolve(parts: Parts, mode: str, busy: int, part: str) -> tuple[float, str]:
    """``part`` of ``mode`` with ``busy`` workers per node, and its source (module docstring)."""
    if part not in DEFAULT_PARTS:
        raise KeyError(f"unknown part {part!r}; one of {sorted(DEFAULT_PARTS)}")
    own = _own(parts, mode, busy, part)
    if own is not None:
        value, at = own
        return value, f"measured: {mode} runs at {at} busy per node"
    composed = _composed(parts, mode, busy, part)
    if composed is not None:
        return composed, f"measured: composed from the other modes ({mode} not run)"
    for other in STAND_INS[mode]:
        found = _own(parts, other, busy, part)
        if found is not None:
            return found[0], f"measured: {other} stands in ({mode} did not measure it)"
    return DEFAULT_PARTS[part], "default: no run measured it"
