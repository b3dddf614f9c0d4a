"""The training results contract: ``trials.csv`` and ``summary.json`` per (mode, G).

``trials.csv`` has one row per configuration with the columns in :data:`TRIAL_COLUMNS`;
``summary.json`` the keys written by :func:`build_summary` (``backend`` says which framework
trained: ``tensorflow`` or ``torch``). The scaling analysis reads only
these two files.
"""

from __future__ import annotations

import csv
import platform
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from distmis.fileio import atomic_path, write_json

STATUS_OK = "ok"
STATUS_FAILED = "failed"


@dataclass
class TrialRecord:
    """One row of trials.csv. Times are wall-clock epoch seconds."""

    trial_id: str
    lr: float
    norm: str
    beta_2: float
    amsgrad: bool
    lr_effective: float  # lr after optional linear scaling by the worker count
    epochs: int
    batch_size_per_replica: int
    global_batch_size: int
    workers: int
    status: str
    start_time: float
    end_time: float
    seconds: float
    volumes_per_second: float  # training volumes processed / trial seconds
    train_loss: float | None = None
    train_dice: float | None = None
    val_loss: float | None = None
    val_dice: float | None = None
    node: str = ""  # host(s) the trial's workers ran on, ';'-separated
    worker: str = ""  # process id(s) and GPU id(s), e.g. "pid=123 gpu=0"
    attempts: int = 1
    error: str = ""


TRIAL_COLUMNS = tuple(f.name for f in fields(TrialRecord))


def write_trials(path: Path, trials: Iterable[TrialRecord]) -> None:
    """Write trials.csv whole (temp file, then rename), rows sorted by trial id."""
    rows = sorted((asdict(t) for t in trials), key=lambda row: row["trial_id"])
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=TRIAL_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def library_versions(backend: str = "tensorflow") -> dict[str, str]:
    """Versions of Python, Ray and the backend's framework (only that one is imported)."""
    import ray

    versions = {"python": platform.python_version(), "ray": ray.__version__}
    if backend == "torch":
        import torch

        versions["torch"] = torch.__version__
        return versions
    import tensorflow as tf
    import tf_keras

    versions.update(tensorflow=tf.__version__, keras=f"tf_keras {tf_keras.__version__}")
    return versions


def build_summary(
    *,
    mode: str,
    gpus: int,
    trials: Sequence[TrialRecord],
    backend: str = "tensorflow",
    makespan_start: float,
    makespan_end: float,
    resources: Mapping[str, Any],
    settings: Mapping[str, Any],
    devices_seen: Sequence[str],
    resumed: bool,
) -> dict:
    """The summary.json payload for one run of one mode at one G."""
    ok = [t for t in trials if t.status == STATUS_OK and t.val_dice is not None]
    best = max(ok, key=lambda t: t.val_dice, default=None)
    nodes = sorted({n for t in trials for n in t.node.split(";") if n})
    return {
        "backend": backend,
        "mode": mode,
        "gpus": gpus,
        "workers": max((t.workers for t in trials), default=0),
        "nodes_seen": nodes,
        "node_count": len(nodes),
        "makespan_seconds": makespan_end - makespan_start,
        "makespan_start": makespan_start,
        "makespan_end": makespan_end,
        # A resumed run's makespan spans the interruption; scaling analysis should not
        # compare it with uninterrupted runs.
        "resumed": resumed,
        "trial_count": len(trials),
        "ok_count": sum(t.status == STATUS_OK for t in trials),
        "failed_count": sum(t.status == STATUS_FAILED for t in trials),
        "best": None
        if best is None
        else {
            "trial_id": best.trial_id,
            "hparams": {k: getattr(best, k) for k in ("lr", "norm", "beta_2", "amsgrad")},
            "val_dice": best.val_dice,
        },
        "resources": dict(resources),
        "settings": dict(settings),
        "devices_seen": sorted(set(devices_seen)),
        "versions": library_versions(backend),
    }


def write_summary(path: Path, summary: Mapping[str, Any]) -> None:
    write_json(path, summary)
