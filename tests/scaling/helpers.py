"""Hand-made training runs and eval summaries in the contract format, and figure checks.

Shared by the tests of :mod:`distmis.scaling` and of its rule adapters (tests/test_workflow.py).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib.image as mpimg

from distmis import backends
from distmis.train.trials import TRIAL_COLUMNS

START = 1_000.0  # makespan_start of every hand-made run
# trials.csv columns from before early stopping: what an older run wrote.
OLD_TRIAL_COLUMNS = tuple(c for c in TRIAL_COLUMNS if c not in ("epochs_run", "startup_seconds"))
# summary.json keys from before hybrid mode and early stopping.
NEW_SUMMARY_KEYS = ("gpus_per_trial", "scheduler", "startup_seconds")


def trial_row(
    trial_id: str,
    start: float,
    end: float,
    *,
    status: str = "ok",
    workers: int = 1,
    volumes_per_second: float = 2.0,
    val_dice: float | None = 0.5,
    epochs_run: int | None = None,
    startup_seconds: float | None = None,
) -> dict:
    """A full trials.csv row in the contract format (every column of TRIAL_COLUMNS).

    A ``stopped`` trial (ASHA) has metrics and a rate like an ok one; a failed one has neither.
    ``epochs_run`` defaults to all 3 epochs for an ok trial, 1 for a stopped one, 0 failed.
    """
    has_metrics = status in ("ok", "stopped")
    if epochs_run is None:
        epochs_run = {"ok": 3, "stopped": 1}.get(status, 0)
    row = dict.fromkeys(TRIAL_COLUMNS, "")
    row.update(
        trial_id=trial_id,
        lr=0.001,
        norm="batch",
        beta_2=0.999,
        amsgrad=False,
        lr_effective=0.001,
        epochs=3,
        batch_size_per_replica=2,
        global_batch_size=2 * workers,
        workers=workers,
        status=status,
        start_time=start,
        end_time=end,
        seconds=end - start,
        volumes_per_second=volumes_per_second if has_metrics else 0.0,
        val_dice="" if not has_metrics or val_dice is None else val_dice,
        node="vm",
        worker="rank0:pid=1",
        attempts=1,
        error="" if has_metrics else "boom",
        epochs_run=epochs_run,
        startup_seconds="" if startup_seconds is None else startup_seconds,
    )
    return row


def write_trials(path: Path, rows: Sequence[dict], columns: Sequence[str] = TRIAL_COLUMNS) -> None:
    """trials.csv with ``columns`` (e.g. OLD_TRIAL_COLUMNS); other keys of the rows are left out."""
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_epochs(
    run: Path, trial_id: str, points: Sequence[tuple[int, float, float]], **metrics: float
) -> Path:
    """``run/trials/<trial_id>/epochs.jsonl``, one line per (epoch, seconds since START, Dice).

    Appends, as training does, so a second call for the same trial is a retried attempt.
    """
    path = run / "trials" / trial_id / "epochs.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        for epoch, seconds, dice in points:
            line = {"epoch": epoch, "time": START + seconds, "val_dice": dice, "loss": 0.1}
            fh.write(json.dumps({**line, **metrics}) + "\n")
    return path


def write_run(
    root: Path,
    mode: str,
    gpus: int,
    makespan: float,
    rows: Sequence[dict] | None = None,
    *,
    resumed: bool = False,
    backend: str = "tensorflow",
    best_val_dice: float | None = 0.5,
    use_gpu: bool = True,
    runner: str = "ray",
    gpus_per_trial: int | None = None,
    scheduler: str = "none",
    startup_seconds: float | None = None,
    folder: str | None = None,
    trial_columns: Sequence[str] = TRIAL_COLUMNS,
    drop: Sequence[str] = (),
) -> Path:
    """``root/{backend}/{mode folder}/{gpus}gpu/`` with summary.json and trials.csv as the
    contract says; the mode folder is ``mode``, or ``hybrid{k}`` for hybrid (``folder``
    overrides it).

    ``gpus_per_trial`` defaults to G (data) or 1 (experiment); hybrid needs it.
    ``drop`` deletes summary keys, e.g. ``("backend",)`` for a summary from before backends
    or NEW_SUMMARY_KEYS for one from before hybrid mode and early stopping;
    ``trial_columns=OLD_TRIAL_COLUMNS`` writes a trials.csv from before early stopping.
    """
    if gpus_per_trial is None:
        gpus_per_trial = gpus if mode == "data" else 1
    if folder is None:
        folder = f"hybrid{gpus_per_trial}" if mode == "hybrid" else mode
    directory = root / backend / folder / f"{gpus}gpu"
    directory.mkdir(parents=True)
    if rows is None:
        rows = [trial_row("t1", START + 1, START + makespan - 1, workers=gpus_per_trial)]
    summary = {
        "backend": backend,
        "mode": mode,
        "runner": runner,
        "gpus_per_trial": gpus_per_trial,
        "scheduler": scheduler,
        "gpus": gpus,
        "workers": max(int(r["workers"]) for r in rows),
        "nodes_seen": ["vm"],
        "node_count": 1,
        "makespan_seconds": makespan,
        "makespan_start": START,
        "makespan_end": START + makespan,
        "resumed": resumed,
        "trial_count": len(rows),
        "ok_count": sum(r["status"] == "ok" for r in rows),
        "failed_count": sum(r["status"] == "failed" for r in rows),
        "stopped_count": sum(r["status"] == "stopped" for r in rows),
        "best": None
        if best_val_dice is None
        else {"trial_id": rows[0]["trial_id"], "hparams": {}, "val_dice": best_val_dice},
        "resources": {"requested": {"cpus": gpus, "gpus": gpus, "use_gpu": use_gpu}},
        "settings": {},
        "devices_seen": [],
        # What the workers trained on: GPUs for a GPU run (the scaling stage refuses one
        # whose workers trained on the CPU).
        "worker_devices": [
            {"host": "vm", "device_type": "gpu" if use_gpu else "cpu", "device_name": "x"}
        ],
        "versions": {},
    }
    if startup_seconds is not None:
        summary["startup_seconds"] = startup_seconds
    for key in drop:
        summary.pop(key, None)
    (directory / "summary.json").write_text(json.dumps(summary))
    write_trials(directory / "trials.csv", rows, trial_columns)
    return directory


def eval_summary(path: Path, model: str, dice: Sequence[float], **extra) -> Path:
    """A rule evaluate summary.json scoring ``model`` with these per-region mean Dice."""
    path.parent.mkdir(parents=True, exist_ok=True)
    regions = {f"R{i}": {"dice": {"mean": value}} for i, value in enumerate(dice)}
    path.write_text(json.dumps({"model": model, "regions": regions, **extra}))
    return path


REFERENCES = [
    {
        "label": "original DistMIS, experiment parallelism",
        "mode": "experiment",
        "gpus": 32,
        "speedup": 12,
    },
    {"label": "original DistMIS, data parallelism", "mode": "data", "gpus": 32, "speedup": 14},
]


BACKENDS = backends.NAMES
MODES = ("data", "experiment")
HYBRID_GPU_COUNTS = (2, 4)  # hybrid2 in make_results(hybrid=True): the G that 2 divides


def make_results(root: Path, *, hybrid: bool = False) -> Path:
    """Both backends and modes at G = 1, 2, 4 with failed trials and resumed runs among them,
    in the format from before epochs.jsonl, hybrid mode and early stopping.

    ``hybrid``: also hybrid2 runs at G = 2, 4 for each backend, with ASHA, a stopped trial
    and every trial's epochs.jsonl, as the training stage writes them now.
    """
    for backend, scale in zip(BACKENDS, (1.0, 0.7), strict=True):
        for gpus, makespan in ((1, 100.0), (2, 60.0), (4, 40.0)):
            rows = [
                trial_row(f"t{i}", START + 2 + 5 * i, START + 2 + 5 * i + 4, workers=gpus)
                for i in range(3)
            ]
            write_run(
                root, "data", gpus, makespan * scale, rows, resumed=gpus == 4, backend=backend
            )
        for gpus, makespan in ((1, 90.0), (2, 50.0), (4, 30.0)):
            rows = [trial_row(f"t{i}", START + 1 + i, START + 20 + i) for i in range(gpus + 1)]
            rows.append(trial_row("bad", START + 3, START + 4, status="failed"))
            write_run(root, "experiment", gpus, makespan, rows, backend=backend)
        for gpus in HYBRID_GPU_COUNTS if hybrid else ():
            makespan = 80.0 / gpus
            rows = [
                trial_row("good", START + 1, START + makespan - 1, workers=2),
                trial_row("poor", START + 1, START + 3, status="stopped", workers=2),
            ]
            run = write_run(
                root,
                "hybrid",
                gpus,
                makespan,
                rows,
                backend=backend,
                gpus_per_trial=2,
                scheduler="asha",
                startup_seconds=1.5,
            )
            write_epochs(run, "poor", [(1, 2.5, 0.2)])
            write_epochs(run, "good", [(1, makespan / 3, 0.4), (2, makespan / 2, 0.7)])
            write_epochs(run, "good", [(3, makespan - 1, 0.75)])
    return root


def timeline_names(gpu_counts, *, hybrid: bool = False) -> set[str]:
    """The timeline figures of make_results' runs at ``gpu_counts`` (with ``hybrid``: too)."""
    names = {
        f"timeline_{backend}_{mode}_{gpus}gpu"
        for backend in BACKENDS
        for mode in MODES
        for gpus in gpu_counts
    }
    if hybrid:
        names |= {
            f"timeline_{backend}_hybrid2_{gpus}gpu"
            for backend in BACKENDS
            for gpus in HYBRID_GPU_COUNTS
            if gpus in gpu_counts
        }
    return names


def assert_figure(stem: Path, paths: list[Path]) -> None:
    assert paths == [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for path in paths:
        assert path.stat().st_size > 0
    image = mpimg.imread(paths[0])
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert paths[1].read_bytes().startswith(b"%PDF")
