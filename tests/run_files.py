"""Small, valid contract objects of a training run folder (:mod:`distmis.run_folder`) for tests
that need one file of a run without training one: every field given, overridable by keyword."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from distmis.hparams import HParams
from distmis.run_folder import MODEL_CARD_FILE, Architecture, ModelCard, TrialRecord


def trial_record(trial_id: str = "t0", **changes) -> TrialRecord:
    """An ok trial's trials.csv row; ``changes`` replace fields."""
    record = TrialRecord(
        trial_id=trial_id,
        hparams=HParams(lr=1e-3, norm="batch", beta_2=0.999, amsgrad=False),
        proposal=0,
        proposed_time=0.0,
        lr_effective=1e-3,
        epochs=2,
        batch_size_per_replica=2,
        global_batch_size=2,
        workers=1,
        status="ok",
        start_time=10.0,
        end_time=20.0,
        seconds=10.0,
        volumes_per_second=1.6,
        train_loss=0.4,
        train_dice=0.5,
        val_loss=0.3,
        val_dice=0.6,
        node="vm",
        worker="rank0:pid=1",
        attempts=1,
        error="",
        epochs_run=2,
        startup_seconds=1.5,
    )
    return dataclasses.replace(record, **changes)


def write_card(
    folder: Path,
    *,
    backend: str = "torch",
    model_file: str = "best_model.pt",
    trial_id: str = "t0",
    tfrecord_dir: str = "results/tfrecords",
) -> Path:
    """``folder/best_model.json``, written as training writes it."""
    card = ModelCard(
        backend=backend,
        model_file=model_file,
        trial=trial_record(trial_id),
        model=Architecture(depth=2, base_filters=4, norm="batch"),
        tfrecord_dir=tfrecord_dir,
    )
    path = Path(folder) / MODEL_CARD_FILE
    card.write(path)
    return path
