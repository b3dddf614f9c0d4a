"""summary.json: counts, the best trial and the makespan of a run."""

from __future__ import annotations

from distmis.run_folder import RequestedResources, Resources, RunSearch, RunSummary
from distmis.train.summary import build_summary
from tests.train.test_trials import record


def test_summary_counts_best_and_makespan(monkeypatch, tmp_path):
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
        search=RunSearch("random", 3, 7),
        trials=trials,
        makespan_start=9.0,
        makespan_end=31.5,
        resources=Resources(
            requested=RequestedResources(cpus=2, gpus=0, cpus_per_worker=1, use_gpu=False),
            ray_cluster=None,
            cpus_visible_to_job=2,
            slurm={},
        ),
        settings={"epochs": 1, "batch_size_per_replica": 2},
        devices_seen=["CPU:x"],
        resumed=False,
        train_volumes=8,
        val_volumes=2,
    )
    assert summary.makespan_seconds == 22.5
    assert summary.search == RunSearch("random", 3, 7)
    assert (summary.trial_count, summary.ok_count, summary.failed_count) == (3, 2, 1)
    assert summary.best.trial_id == "b" and summary.best.val_dice == 0.7
    assert summary.nodes_seen == ("n1", "n2")
    assert summary.backend == "tensorflow"  # the default when a caller names none
    assert (summary.train_volumes, summary.val_volumes) == (8, 2)
    # Written and read back through the contract: the same summary.
    summary.write(tmp_path / "summary.json")
    assert RunSummary.read(tmp_path / "summary.json") == summary
