"""trials.csv: the columns of the contract, rows in trial-id order."""

from __future__ import annotations

import csv

from distmis.hparams import HParams
from distmis.run_folder import TrialRecord, read_trials
from distmis.train.trials import TRIAL_COLUMNS, write_trials
from tests.run_files import trial_record


def record(
    trial_id: str, start: float, end: float, status: str = "ok", val_dice: float | None = 0.5
) -> TrialRecord:
    metrics = status == "ok"
    return trial_record(
        trial_id,
        hparams=HParams(lr=1e-3, norm="batch", beta_2=0.99, amsgrad=False),
        epochs=1,
        status=status,
        start_time=start,
        end_time=end,
        seconds=end - start,
        volumes_per_second=1.0,
        train_loss=0.4 if metrics else None,
        train_dice=0.5 if metrics else None,
        val_loss=0.3 if metrics else None,
        val_dice=val_dice,
        node="n1;n2",
        error="" if metrics else "boom",
        epochs_run=1 if metrics else 0,
        startup_seconds=0.5 if metrics else None,
    )


def test_trials_csv_has_the_contract_columns(tmp_path):
    path = tmp_path / "trials.csv"
    write_trials(path, [record("b", 0, 1), record("a", 1, 3, status="failed", val_dice=None)])
    rows = list(csv.DictReader(path.open()))
    assert tuple(rows[0]) == TRIAL_COLUMNS and TRIAL_COLUMNS[0] == "format"
    assert {r["format"] for r in rows} == {"distmis-trial-record/2"}
    assert [r["trial_id"] for r in rows] == ["a", "b"]
    assert rows[0]["status"] == "failed" and rows[0]["val_dice"] == ""
    assert read_trials(path) == [
        record("a", 1, 3, status="failed", val_dice=None),
        record("b", 0, 1),
    ]
