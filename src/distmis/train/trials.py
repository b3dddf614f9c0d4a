"""Turning what a trial left in ``<out>/trials/<trial_id>/`` into a trials.csv row."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from distmis.fileio import write_json
from distmis.train.grid import HParams
from distmis.train.results import STATUS_FAILED, STATUS_OK, TrialRecord
from distmis.train.settings import TrainSettings
from distmis.train.worker import MODEL_FILES


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


def _one_line(error: str) -> str:
    """The last non-empty line of a (Ray-wrapped) traceback: the exception that was raised."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    return lines[-1][:500] if lines else error


def build_record(
    settings: TrainSettings,
    hparams: HParams,
    *,
    error: str | None,
    driver_start: float,
    driver_end: float,
) -> TrialRecord:
    """A trials.csv row from the trial's result.json, worker files and attempt log.

    Start and end are what the trial measured itself (rank 0, from entering the training
    function to saving the model), so both modes time the same span; a trial that failed
    before writing a result falls back to what the driver saw.
    """
    directory = trial_dir(settings, hparams.trial_id)
    result = _read(directory / "result.json") if error is None else None
    workers = worker_files(directory)
    attempts_log = directory / "attempts.log"
    attempts = len(attempts_log.read_text().split()) if attempts_log.is_file() else 0
    world = settings.gpus if settings.mode == "data" else 1
    failure = _read(directory / "failed.json") if result is None else None
    if failure is not None:
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
        status=STATUS_OK if result is not None else STATUS_FAILED,
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
        if result is not None
        else (error or "trial ended without a result").splitlines()[0][:500],
    )


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


BEST_MODEL_FILES = {"tensorflow": "best_model.keras", "torch": "best_model.pt"}
MODEL_CARD = "best_model.json"


def save_best_model(settings: TrainSettings, records: Sequence[TrialRecord]) -> dict | None:
    """Copy the best trial's model beside trials.csv, then write its card ``best_model.json``.

    The card names the backend and the model file (``best_model.keras`` or ``best_model.pt``,
    relative to the card), the trial's trials.csv row, the architecture and the data. It is
    written last, so a card on disk means its model file is complete.
    """
    ok = [r for r in records if r.status == STATUS_OK and r.val_dice is not None]
    if not ok:
        return None
    best = max(ok, key=lambda r: r.val_dice)
    model_file = BEST_MODEL_FILES[settings.backend]
    source = trial_dir(settings, best.trial_id) / MODEL_FILES[settings.backend]
    staged = settings.out_dir / f"{model_file}.tmp"
    shutil.copyfile(source, staged)
    staged.replace(settings.out_dir / model_file)
    for other in set(BEST_MODEL_FILES.values()) - {model_file}:
        (settings.out_dir / other).unlink(missing_ok=True)  # never a stale other-backend model
    payload = {
        "backend": settings.backend,
        "model_file": model_file,
        "trial": asdict(best),
        "model": {
            "depth": settings.depth,
            "base_filters": settings.base_filters,
            "norm": best.norm,
        },
        "tfrecord_dir": str(settings.tfrecord_dir),
    }
    write_json(settings.out_dir / MODEL_CARD, payload)
    return payload
