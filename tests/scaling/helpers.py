"""Hand-made training runs and eval summaries in the contract format, and figure checks.

Runs are written through their contract (:mod:`distmis.run_folder`), as training writes them.
Shared by the tests of :mod:`distmis.scaling` and of its rule adapters (tests/test_workflow.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib.image as mpimg

from distmis import backends, run_folder
from distmis.hparams import HParams
from distmis.run_folder import (
    BestTrial,
    EpochRecord,
    RequestedResources,
    Resources,
    RunSearch,
    RunSummary,
    TrialRecord,
    WorkerDevice,
)

START = 1_000.0  # makespan_start of every hand-made run
GRID = RunSearch("grid", None, 0)  # how a hand-made run chose its configurations, by default
RANDOM = RunSearch("random", 8, 0)  # a random search of 8 configurations


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
) -> TrialRecord:
    """A trials.csv row (:class:`~distmis.run_folder.TrialRecord`).

    A ``stopped`` trial (ASHA) has metrics and a rate like an ok one; a failed one has neither.
    ``epochs_run`` defaults to all 3 epochs for an ok trial, 1 for a stopped one, 0 failed.
    """
    has_metrics = status in ("ok", "stopped")
    if epochs_run is None:
        epochs_run = {"ok": 3, "stopped": 1}.get(status, 0)
    return TrialRecord(
        trial_id=trial_id,
        hparams=HParams(lr=0.001, norm="batch", beta_2=0.999, amsgrad=False),
        proposal=0,
        proposed_time=0.0,
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
        train_loss=0.1 if has_metrics else None,
        train_dice=0.4 if has_metrics else None,
        val_loss=0.2 if has_metrics else None,
        val_dice=val_dice if has_metrics else None,
        node="vm",
        worker="rank0:pid=1",
        attempts=1,
        error="" if has_metrics else "boom",
        epochs_run=epochs_run,
        startup_seconds=startup_seconds,
    )


def write_trials(path: Path, rows: Sequence[TrialRecord]) -> None:
    """trials.csv of ``rows``, through the contract."""
    run_folder.write_trials(path, rows)


def set_cell(path: Path, line: int, column: str, value: str) -> None:
    """Overwrite one cell of a written trials.csv (a broken file, by hand)."""
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[line - 1].split(",")
    cells[header.index(column)] = value
    lines[line - 1] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")


def edit_summary(run: Path, **changes) -> None:
    """Change keys of a written summary.json (None deletes the key): a broken file, by hand."""
    path = run / "summary.json"
    summary = json.loads(path.read_text())
    summary.update(changes)
    for key, value in changes.items():
        if value is None:
            summary.pop(key)
    path.write_text(json.dumps(summary))


def write_epochs(
    run: Path, trial_id: str, points: Sequence[tuple[int, float, float]], **metrics: float
) -> Path:
    """``run/trials/<trial_id>/epochs.jsonl``, one line per (epoch, seconds since START, Dice).

    Appends, as training does, so a second call for the same trial is a retried attempt.
    """
    folder = run_folder.trial_folder(run, trial_id)
    folder.mkdir(parents=True, exist_ok=True)
    for epoch, seconds, dice in points:
        time = START + seconds
        record = EpochRecord(
            epoch=epoch,
            time=time,
            started=time - 1.0,
            train_seconds=0.75,
            val_seconds=0.25,
            metrics={"val_dice": dice, "loss": 0.1, **metrics},
        )
        run_folder.append_epoch(folder, record)
    return folder / run_folder.EPOCHS_FILE


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
    search: RunSearch = GRID,
) -> Path:
    """``root/{backend}/{mode folder}/{gpus}gpu/`` with summary.json and trials.csv written
    through their contract; the mode folder is ``mode``, or ``hybrid{k}`` for hybrid
    (``folder`` overrides it).

    ``gpus_per_trial`` defaults to G (data) or 1 (experiment); hybrid needs it. ``search``:
    how the run chose its configurations (default: the whole grid).
    """
    if gpus_per_trial is None:
        gpus_per_trial = gpus if mode == "data" else 1
    if folder is None:
        folder = f"hybrid{gpus_per_trial}" if mode == "hybrid" else mode
    directory = root / backend / folder / f"{gpus}gpu"
    directory.mkdir(parents=True)
    if rows is None:
        rows = [trial_row("t1", START + 1, START + makespan - 1, workers=gpus_per_trial)]
    summary = RunSummary(
        backend=backend,
        mode=mode,
        runner=runner,
        gpus_per_trial=gpus_per_trial,
        scheduler=scheduler,
        search=search,
        startup_seconds=startup_seconds or 0.0,
        gpus=gpus,
        workers=max(r.workers for r in rows),
        nodes_seen=("vm",),
        node_count=1,
        makespan_seconds=makespan,
        makespan_start=START,
        makespan_end=START + makespan,
        resumed=resumed,
        trial_count=len(rows),
        ok_count=sum(r.status == "ok" for r in rows),
        failed_count=sum(r.status == "failed" for r in rows),
        stopped_count=sum(r.status == "stopped" for r in rows),
        best=None
        if best_val_dice is None
        else BestTrial(trial_id=rows[0].trial_id, hparams={}, val_dice=best_val_dice),
        resources=Resources(
            requested=RequestedResources(cpus=gpus, gpus=gpus, cpus_per_worker=1, use_gpu=use_gpu),
            ray_cluster=None,
            cpus_visible_to_job=gpus,
            slurm={},
        ),
        settings={"epochs": 3, "batch_size_per_replica": 2},
        devices_seen=(),
        # What the workers trained on: GPUs for a GPU run (the scaling stage refuses one
        # whose workers trained on the CPU).
        worker_devices=(WorkerDevice("vm", "gpu" if use_gpu else "cpu", "x"),),
        versions={},
        train_volumes=8,
        val_volumes=2,
    )
    summary.write(directory / run_folder.SUMMARY_FILE)
    write_trials(directory / run_folder.TRIALS_FILE, rows)
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


def write_final_epochs(run: Path, rows: Sequence[TrialRecord]) -> None:
    """One epochs.jsonl line per trial with metrics: its final validation at its end."""
    for row in rows:
        if row.val_dice is not None:
            write_epochs(run, row.trial_id, [(row.epochs_run, row.end_time - START, row.val_dice)])


def make_results(root: Path, *, hybrid: bool = False) -> Path:
    """Both backends and modes at G = 1, 2, 4 with failed trials and resumed runs among them,
    each trial with metrics validated once, at its end.

    ``hybrid``: also hybrid2 runs at G = 2, 4 for each backend, with ASHA, a stopped trial
    and epochs validated along the way.
    """
    for backend, scale in zip(BACKENDS, (1.0, 0.7), strict=True):
        for gpus, makespan in ((1, 100.0), (2, 60.0), (4, 40.0)):
            rows = [
                trial_row(f"t{i}", START + 2 + 5 * i, START + 2 + 5 * i + 4, workers=gpus)
                for i in range(3)
            ]
            run = write_run(
                root, "data", gpus, makespan * scale, rows, resumed=gpus == 4, backend=backend
            )
            write_final_epochs(run, rows)
        for gpus, makespan in ((1, 90.0), (2, 50.0), (4, 30.0)):
            rows = [trial_row(f"t{i}", START + 1 + i, START + 20 + i) for i in range(gpus + 1)]
            rows.append(trial_row("bad", START + 3, START + 4, status="failed"))
            run = write_run(root, "experiment", gpus, makespan, rows, backend=backend)
            write_final_epochs(run, rows)
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


def write_search_runs(root: Path, runs: Sequence[tuple[RunSearch, str, int, float]]) -> list[Path]:
    """Runs of several searches, one per (search, mode, G, makespan), each search's under its
    own ``root/{algorithm}{samples}_{seed}/``: the training layout holds one run per
    (backend, mode, G), so a study of several searches gathers several results folders."""
    return [
        write_run(
            root / f"{search.algorithm}{search.samples or ''}_{search.seed}",
            mode,
            gpus,
            makespan,
            search=search,
        )
        for search, mode, gpus, makespan in runs
    ]
