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


def trial_row(
    trial_id: str,
    start: float,
    end: float,
    *,
    status: str = "ok",
    workers: int = 1,
    volumes_per_second: float = 2.0,
    val_dice: float | None = 0.5,
) -> dict:
    """A full trials.csv row in the contract format (every column of TRIAL_COLUMNS)."""
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
        volumes_per_second=volumes_per_second if status == "ok" else 0.0,
        val_dice="" if status != "ok" or val_dice is None else val_dice,
        node="vm",
        worker="rank0:pid=1",
        attempts=1,
        error="" if status == "ok" else "boom",
    )
    return row


def write_trials(path: Path, rows: Sequence[dict]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=TRIAL_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


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
    drop: Sequence[str] = (),
) -> Path:
    """``root/{backend}/{mode}/{gpus}gpu/`` with summary.json and trials.csv as the contract says.

    ``drop`` deletes summary keys, e.g. ``("backend",)`` for a summary from before backends.
    """
    directory = root / backend / mode / f"{gpus}gpu"
    directory.mkdir(parents=True)
    if rows is None:
        workers = gpus if mode == "data" else 1
        rows = [trial_row("t1", START + 1, START + makespan - 1, workers=workers)]
    summary = {
        "backend": backend,
        "mode": mode,
        "runner": runner,
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
        "best": None
        if best_val_dice is None
        else {"trial_id": rows[0]["trial_id"], "hparams": {}, "val_dice": best_val_dice},
        "resources": {"requested": {"cpus": gpus, "gpus": gpus, "use_gpu": use_gpu}},
        "settings": {},
        "devices_seen": [],
        "versions": {},
    }
    for key in drop:
        del summary[key]
    (directory / "summary.json").write_text(json.dumps(summary))
    write_trials(directory / "trials.csv", rows)
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


def make_results(root: Path) -> Path:
    """Both backends and modes at G = 1, 2, 4 with failed trials and resumed runs among them."""
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
    return root


def timeline_names(gpu_counts) -> set[str]:
    return {
        f"timeline_{backend}_{mode}_{gpus}gpu"
        for backend in BACKENDS
        for mode in MODES
        for gpus in gpu_counts
    }


def assert_figure(stem: Path, paths: list[Path]) -> None:
    assert paths == [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for path in paths:
        assert path.stat().st_size > 0
    image = mpimg.imread(paths[0])
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert paths[1].read_bytes().startswith(b"%PDF")
