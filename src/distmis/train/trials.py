"""Each configuration's :class:`~distmis.run_folder.TrialRecord` (a ``trials.csv`` row and its
``record.json``), built from what the trial left in ``<out>/trials/<trial_id>/``.

The files and their formats are :mod:`distmis.run_folder`'s; this module decides what a
trial's record says (its status, span, metrics and rate) from them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from distmis import run_folder
from distmis.run_folder import (
    FAILED_FILE,
    RECORD_FILE,
    RESULT_FILE,
    STATUS_FAILED,
    STATUS_OK,
    STATUS_STOPPED,
    TRIAL_COLUMNS,  # noqa: F401 - importable from here, where tests have found it
    FailedAttempt,
    TrialRecord,
    TrialResult,
    WorkerDevice,
    WorkerInfo,
    read_attempts,
    read_epochs,
    read_if_present,
    read_workers,
)
from distmis.search import Proposal
from distmis.train.settings import TrainSettings


def write_trials(path: Path, trials: Iterable[TrialRecord]) -> None:
    """Write trials.csv whole (temp file, then rename), rows sorted by trial id."""
    run_folder.write_trials(path, trials)


def trial_dir(settings: TrainSettings, trial_id: str) -> Path:
    return run_folder.trial_folder(settings.out_dir, trial_id)


def build_record(
    settings: TrainSettings,
    proposal: Proposal,
    *,
    error: str | None,
    driver_start: float,
    driver_end: float,
    stopped: bool = False,
) -> TrialRecord:
    """``proposal``'s trials.csv row from the trial's result.json, worker files and attempt log.

    Start and end are what the trial measured itself (rank 0, from entering the training
    function to saving the model), so both modes time the same span; a trial that failed
    before writing a result falls back to what the driver saw. ``stopped``: the scheduler
    ended it early without an error; its metrics and end are its last validated epoch's
    (``epochs.jsonl``).
    """
    directory = trial_dir(settings, proposal.trial_id)
    result: TrialResult | None = (
        read_if_present(TrialResult, directory / RESULT_FILE) if error is None else None
    )
    workers = read_workers(directory)
    attempts = read_attempts(directory)
    world = settings.workers_per_trial
    epochs = read_epochs(directory)
    failure: FailedAttempt | None = (
        read_if_present(FailedAttempt, directory / FAILED_FILE)
        if result is None and not stopped
        else None
    )
    metrics: dict[str, float] = {}
    volumes = 0
    if result is None and stopped and epochs:
        first_attempt = attempts[0] if attempts else driver_start
        start, end, metrics = first_attempt, epochs[-1].time, dict(epochs[-1].metrics)
        volumes = _stopped_volumes(workers, len({e.epoch for e in epochs}))
    elif failure is not None:
        start, end = failure.start_time, failure.end_time
        error = failure.error  # the worker's own message, not Ray's wrapper
    elif result is None:
        start, end = driver_start, driver_end
    else:
        start, end = result.start_time, result.end_time
        metrics, volumes = dict(result.metrics), result.volumes_trained
    seconds = end - start
    hosts = sorted({w.host for w in workers})
    worker_ids = [
        f"rank{w.rank}:pid={w.pid}" + (f",gpu={'/'.join(w.gpu_ids)}" if w.gpu_ids else "")
        for w in workers
    ]
    finished = result is not None or (stopped and bool(epochs))
    hparams = proposal.hparams
    return TrialRecord(
        trial_id=proposal.trial_id,
        hparams=hparams,
        proposal=proposal.number,
        proposed_time=_proposed_time(proposal),
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
        # A failed trial has no metrics (None, an empty cell), by design.
        train_loss=_metric(metrics, "loss"),
        train_dice=_metric(metrics, "dice"),
        val_loss=_metric(metrics, "val_loss"),
        val_dice=_metric(metrics, "val_dice"),
        node=";".join(hosts),
        worker=";".join(worker_ids),
        attempts=max(len(attempts), 1),
        error="" if finished else (error or "trial ended without a result").splitlines()[0][:500],
        epochs_run=len({e.epoch for e in epochs})
        if epochs
        else (settings.epochs if result is not None else 0),
        startup_seconds=result.startup_seconds if result is not None else None,
    )


def _proposed_time(proposal: Proposal) -> float:
    # A searcher stamps every proposal it asks; one without a time was built by hand.
    if proposal.proposed_time is None:
        raise ValueError(f"proposal {proposal.trial_id} has no proposed_time: ask a searcher")
    return proposal.proposed_time


def _metric(metrics: dict[str, float], name: str) -> float | None:
    # Empty for a trial without metrics; a trial with metrics has every one of these.
    return metrics[name] if metrics else None


def _stopped_volumes(workers: Sequence[WorkerInfo], epochs_run: int) -> int:
    """Training volumes a stopped trial processed: epochs × steps × global batch (its worker
    files say the steps and batch)."""
    if not workers:
        return 0
    return epochs_run * workers[0].steps_per_epoch * workers[0].global_batch_size


def save_record(settings: TrainSettings, record: TrialRecord) -> None:
    """Mark the trial finished (ok or failed) so a rerun does not train it again."""
    record.write(trial_dir(settings, record.trial_id) / RECORD_FILE)


def load_record(settings: TrainSettings, trial_id: str) -> TrialRecord | None:
    """The record of a configuration an earlier (interrupted) run finished, else None."""
    return read_if_present(TrialRecord, trial_dir(settings, trial_id) / RECORD_FILE)


def devices_seen(settings: TrainSettings, records: Sequence[TrialRecord]) -> list[str]:
    return sorted(
        {
            d
            for r in records
            for w in read_workers(trial_dir(settings, r.trial_id))
            for d in w.devices
        }
    )


def worker_devices(settings: TrainSettings, records: Sequence[TrialRecord]) -> list[WorkerDevice]:
    """What the workers trained on, once per (host, device type, device name), sorted: the
    ``worker_devices`` of summary.json."""
    seen = {
        (w.host, w.device_type, w.device_name)
        for r in records
        for w in read_workers(trial_dir(settings, r.trial_id))
    }
    return [WorkerDevice(host, kind, name) for host, kind, name in sorted(seen)]
