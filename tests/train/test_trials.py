"""trials.csv: the columns of the contract, rows in trial-id order."""

from __future__ import annotations

import csv

from distmis.train.trials import TRIAL_COLUMNS, TrialRecord, write_trials


def record(
    trial_id: str, start: float, end: float, status: str = "ok", val_dice: float | None = 0.5
) -> TrialRecord:
    return TrialRecord(
        trial_id=trial_id,
        lr=1e-3,
        norm="batch",
        beta_2=0.99,
        amsgrad=False,
        lr_effective=1e-3,
        epochs=1,
        batch_size_per_replica=2,
        global_batch_size=2,
        workers=1,
        status=status,
        start_time=start,
        end_time=end,
        seconds=end - start,
        volumes_per_second=1.0,
        val_dice=val_dice,
        node="n1;n2",
    )


def test_trials_csv_has_the_contract_columns(tmp_path):
    path = tmp_path / "trials.csv"
    write_trials(path, [record("b", 0, 1), record("a", 1, 3, status="failed", val_dice=None)])
    rows = list(csv.DictReader(path.open()))
    assert tuple(rows[0]) == TRIAL_COLUMNS
    assert [r["trial_id"] for r in rows] == ["a", "b"]
    assert rows[0]["status"] == "failed" and rows[0]["val_dice"] == ""
