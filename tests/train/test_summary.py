"""summary.json: counts, the best trial and the makespan of a run."""

from __future__ import annotations

from distmis.train.summary import build_summary
from tests.train.test_trials import record


def test_summary_counts_best_and_makespan(monkeypatch):
    monkeypatch.setattr(
        "distmis.train.summary.library_versions", lambda backend: {"python": "3.11"}
    )
    trials = [
        record("a", 10, 20, val_dice=0.4),
        record("b", 12, 30, val_dice=0.7),
        record("c", 11, 12, status="failed", val_dice=None),
    ]
    summary = build_summary(
        mode="experiment",
        gpus=2,
        trials=trials,
        makespan_start=9.0,
        makespan_end=31.5,
        resources={},
        settings={},
        devices_seen=["CPU:x"],
        resumed=False,
    )
    assert summary["makespan_seconds"] == 22.5
    assert (summary["trial_count"], summary["ok_count"], summary["failed_count"]) == (3, 2, 1)
    assert summary["best"]["trial_id"] == "b" and summary["best"]["val_dice"] == 0.7
    assert summary["nodes_seen"] == ["n1", "n2"]
    assert summary["backend"] == "tensorflow"  # the default when a caller names none
