"""The run's results beside ``trials.csv``: ``summary.json`` and the best model with its card.

``summary.json`` is a :class:`~distmis.run_folder.RunSummary` (:func:`build_summary`;
``backend`` says which framework trained: ``tensorflow`` or ``torch``); the best model is
``best_model<suffix>`` of the backend (``best_model.keras``, ``best_model.pt``), described by
its :class:`~distmis.run_folder.ModelCard` ``best_model.json`` (:func:`save_best_model`). The
planning, scaling and evaluation stages read only these files and ``trials.csv``, through
:mod:`distmis.run_folder`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import platform
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from distmis import backends, modes
from distmis.run_folder import (
    MODEL_CARD_FILE,
    STATUS_FAILED,
    STATUS_OK,
    STATUS_STOPPED,
    Architecture,
    BestTrial,
    ModelCard,
    Resources,
    RunSearch,
    RunSummary,
    TrialRecord,
    WorkerDevice,
)
from distmis.train.settings import TrainSettings
from distmis.train.trials import trial_dir


def library_versions(backend: str = "tensorflow") -> dict[str, str]:
    """Versions of Python, Ray and the backend's framework (only that one is imported).

    Ray's comes from its installed metadata, so a local run (no Ray) never imports it, and a
    machine without Ray simply has no ``ray`` entry.
    """
    versions = {"python": platform.python_version()}
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        versions["ray"] = importlib.metadata.version("ray")
    return {**versions, **backends.get(backend).versions()}


def build_summary(
    *,
    mode: str,
    gpus: int,
    trials: Sequence[TrialRecord],
    backend: str = "tensorflow",
    runner: str = "ray",
    gpus_per_trial: int | None = None,
    scheduler: str = "none",
    search: RunSearch,
    makespan_start: float,
    makespan_end: float,
    resources: Resources,
    settings: Mapping[str, Any],
    devices_seen: Sequence[str],
    resumed: bool,
    train_volumes: int,
    val_volumes: int,
    worker_devices: Sequence[WorkerDevice] = (),
) -> RunSummary:
    """The summary.json of one run of one mode at one G; ``train_volumes`` and
    ``val_volumes``: the split sizes it trained and validated on."""
    ok = [t for t in trials if t.status == STATUS_OK and t.val_dice is not None]
    best = max(ok, key=lambda t: t.val_dice, default=None)
    nodes = sorted({n for t in trials for n in t.node.split(";") if n})
    return RunSummary(
        backend=backend,
        mode=mode,
        # ray (Ray Train / Ray Tune) or local (distmis.train.local: one process, no Ray).
        runner=runner,
        # Workers per configuration: G (data), 1 (experiment), k (hybrid).
        gpus_per_trial=gpus_per_trial
        if gpus_per_trial is not None
        else modes.get(mode).workers_per_trial(gpus),
        scheduler=scheduler,  # none | asha
        search=search,
        # The run's start-up: every trial's "asked for → first training epoch", summed (a
        # trial that did not finish has none).
        startup_seconds=sum(t.startup_seconds or 0.0 for t in trials),
        gpus=gpus,
        workers=max((t.workers for t in trials), default=0),
        nodes_seen=tuple(nodes),
        node_count=len(nodes),
        makespan_seconds=makespan_end - makespan_start,
        makespan_start=makespan_start,
        makespan_end=makespan_end,
        # A resumed run's makespan spans the interruption; scaling analysis should not
        # compare it with uninterrupted runs.
        resumed=resumed,
        trial_count=len(trials),
        ok_count=sum(t.status == STATUS_OK for t in trials),
        failed_count=sum(t.status == STATUS_FAILED for t in trials),
        stopped_count=sum(t.status == STATUS_STOPPED for t in trials),
        best=None
        if best is None
        else BestTrial(
            trial_id=best.trial_id,
            hparams=best.hparams.to_dict(),
            val_dice=best.val_dice,
        ),
        resources=resources,
        settings=dict(settings),
        devices_seen=tuple(sorted(set(devices_seen))),
        # What each host's workers trained on (device_type gpu|cpu, device_name): the scaling
        # stage refuses a use_gpu run whose workers trained on the CPU.
        worker_devices=tuple(worker_devices),
        versions=library_versions(backend),
        train_volumes=train_volumes,
        val_volumes=val_volumes,
    )


def write_summary(path: Path, summary: RunSummary) -> None:
    summary.write(path)


def save_best_model(settings: TrainSettings, records: Sequence[TrialRecord]) -> ModelCard | None:
    """Copy the best trial's model beside trials.csv, then write its card ``best_model.json``.

    The card names the backend and the model file (``best_model.keras`` or ``best_model.pt``,
    relative to the card), the trial's trials.csv row, the architecture and the data. It is
    written last, so a card on disk means its model file is complete.
    """
    ok = [r for r in records if r.status == STATUS_OK and r.val_dice is not None]
    if not ok:
        return None
    best = max(ok, key=lambda r: r.val_dice)
    backend = backends.get(settings.backend)
    model_file = backend.best_model_file
    source = trial_dir(settings, best.trial_id) / backend.trial_model_file
    staged = settings.out_dir / f"{model_file}.tmp"
    shutil.copyfile(source, staged)
    staged.replace(settings.out_dir / model_file)
    for name in backends.NAMES:
        other = backends.get(name).best_model_file
        if other != model_file:
            (settings.out_dir / other).unlink(missing_ok=True)  # never a stale other-backend model
    card = ModelCard(
        backend=settings.backend,
        model_file=model_file,
        trial=best,
        model=Architecture(
            depth=settings.depth, base_filters=settings.base_filters, norm=best.hparams.norm
        ),
        tfrecord_dir=str(settings.tfrecord_dir),
    )
    card.write(settings.out_dir / MODEL_CARD_FILE)
    return card
