"""The ``trials.csv`` contract: one :class:`TrialRecord` per configuration, built from what the
trial left in ``<out>/trials/<trial_id>/`` (the files of :mod:`distmis.trial`).

Columns are the fields of :class:`TrialRecord`, in order (:data:`TRIAL_COLUMNS`). The scaling
stage reads only this file and ``summary.json`` (:mod:`distmis.train.summary`).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from distmis.fileio import atomic_path, write_json
from distmis.hparams import HParams
from distmis.train.settings import TrainSettings
from distmis.trial import STATUS_FAILED, STATUS_OK, STATUS_STOPPED, read_epochs


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
    epochs_run: int = 0  # epochs validated (== epochs when ok; fewer when stopped or failed)
    startup_seconds: float | None = None  # asked for → first training epoch (result.json)


TRIAL_COLUMNS = tuple(f.name for f in fields(TrialRecord))


def write_trials(path: Path, trials: Iterable[TrialRecord]) -> None:
    """Write trials.csv whole (temp file, then rename), rows sorted by trial id."""
    rows = sorted((asdict(t) for t in trials), key=lambda row: row["trial_id"])
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=TRIAL_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def trial_dir(settings: TrainSettings, trial_id: str) -> Path:
    return settings.out_dir / "trials" / trial_id


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def worker_files(directory: Path) -> list[dict]:
    """The per-rank files the workers of the last attempt wrote, by rank."""
    found = [_read(p) for p in sorted((directory / "workers").glob("rank*.json"))]
    return sorted((w for w in found if w), key=lambda w: w["rank"])


def build_record(
    settings: TrainSettings,
    hparams: HParams,
    *,
    error: str | None,
    driver_start: float,
    driver_end: float,
    stopped: bool = False,
) -> TrialRecord:
    """A trials.csv row from the trial's result.json, worker files and attempt log.

    Start and end are what the trial measured itself (rank 0, from entering the training
    function to saving the model), so both modes time the same span; a trial that failed
    before writing a result falls back to what the driver saw. ``stopped``: the scheduler
    ended it early without an error; its metrics and end are its last validated epoch's
    (``epochs.jsonl``).
    """
    directory = trial_dir(settings, hparams.trial_id)
    result = _read(directory / "result.json") if error is None else None
    workers = worker_files(directory)
    attempts_log = directory / "attempts.log"
    attempts = len(attempts_log.read_text().split()) if attempts_log.is_file() else 0
    world = settings.workers_per_trial
    epochs = read_epochs(directory)
    failure = _read(directory / "failed.json") if result is None and not stopped else None
    if result is None and stopped and epochs:
        first_attempt = float(attempts_log.read_text().split()[0]) if attempts else driver_start
        start, end, metrics = first_attempt, epochs[-1]["time"], epochs[-1]
        volumes = _stopped_volumes(workers, len({e["epoch"] for e in epochs}))
    elif failure is not None:
        start, end, metrics, volumes = failure["start_time"], failure["end_time"], {}, 0
        error = failure["error"]  # the worker's own message, not Ray's wrapper
    elif result is None:
        start, end, metrics, volumes = driver_start, driver_end, {}, 0
    else:
        start, end = result["start_time"], result["end_time"]
        metrics, volumes = result["metrics"], result["volumes_trained"]
    seconds = end - start
    hosts = sorted({w["host"] for w in workers})
    worker_ids = [
        f"rank{w['rank']}:pid={w['pid']}"
        + (f",gpu={'/'.join(w['gpu_ids'])}" if w["gpu_ids"] else "")
        for w in workers
    ]
    return TrialRecord(
        trial_id=hparams.trial_id,
        lr=hparams.lr,
        norm=hparams.norm,
        beta_2=hparams.beta_2,
        amsgrad=hparams.amsgrad,
        lr_effective=settings.lr_effective(hparams),
        epochs=settings.epochs,
        batch_size_per_replica=settings.batch_size_per_replica,
        global_batch_size=settings.batch_size_per_replica * world,
        workers=world,
        status=STATUS_OK
        if result is not None
        else (STATUS_STOPPED if stopped and epochs else STATUS_FAILED),
        start_time=start,
        end_time=end,
        seconds=seconds,
        volumes_per_second=volumes / seconds if seconds > 0 else 0.0,
        train_loss=metrics.get("loss"),
        train_dice=metrics.get("dice"),
        val_loss=metrics.get("val_loss"),
        val_dice=metrics.get("val_dice"),
        node=";".join(hosts),
        worker=";".join(worker_ids),
        attempts=max(attempts, 1),
        error=""
        if result is not None or (stopped and epochs)
        else (error or "trial ended without a result").splitlines()[0][:500],
        epochs_run=len({e["epoch"] for e in epochs})
        if epochs
        else (settings.epochs if result is not None else 0),
        startup_seconds=result.get("startup_seconds") if result is not None else None,
    )


def _stopped_volumes(workers: Sequence[dict], epochs_run: int) -> int:
    """Training volumes a stopped trial processed: epochs × steps × global batch (its worker
    files say the steps and batch)."""
    if not workers:
        return 0
    return epochs_run * workers[0]["steps_per_epoch"] * workers[0]["global_batch_size"]


def save_record(settings: TrainSettings, record: TrialRecord) -> None:
    """Mark the trial finished (ok or failed) so a rerun does not train it again."""
    write_json(trial_dir(settings, record.trial_id) / "record.json", asdict(record))


def load_record(settings: TrainSettings, trial_id: str) -> TrialRecord | None:
    payload = _read(trial_dir(settings, trial_id) / "record.json")
    return TrialRecord(**payload) if payload else None


def devices_seen(settings: TrainSettings, records: Sequence[TrialRecord]) -> list[str]:
    return sorted(
        {
            d
            for r in records
            for w in worker_files(trial_dir(settings, r.trial_id))
            for d in w["devices"]
        }
    )


def worker_devices(settings: TrainSettings, records: Sequence[TrialRecord]) -> list[dict[str, str]]:
    """What the workers trained on, once per (host, device type, device name), sorted: the
    ``worker_devices`` of summary.json."""
    # A worker file from before devices were recorded (a run resumed across versions) says
    # "unrecorded", which the scaling stage refuses for a GPU run like a CPU.
    seen = {
        (w["host"], w.get("device_type", "unrecorded"), w.get("device_name", "unrecorded"))
        for r in records
        for w in worker_files(trial_dir(settings, r.trial_id))
    }
    return [
        {"host": host, "device_type": kind, "device_name": name}
        for host, kind, name in sorted(seen)
    ]
