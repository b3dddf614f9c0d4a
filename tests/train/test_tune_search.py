"""Ray Tune's numbered TPE searcher, driven as Tune drives it (suggest, results, completion)
but without a Tune run: what it hands each trial, and what it records and tells."""

from __future__ import annotations

from pathlib import Path

import pytest

from distmis.config import validate_config
from distmis.hparams import HParams
from distmis.run_folder import read_search_events
from distmis.search import Search
from distmis.train.settings import TrainSettings
from distmis.train.tune_search import NumberedOptunaSearch, proposal_of

SPACE = {
    "lr": {"loguniform": [0.001, 0.02]},
    "norm": ["batch", "group"],
    "beta_2": [0.999],
    "amsgrad": [False],
}


def settings(tmp_path: Path) -> TrainSettings:
    search = {"algorithm": "tpe", "samples": 4, "seed": 3, "startup_trials": 2}
    train = {"backend": "torch", "epochs": 2, "search_space": SPACE, "search": search}
    config = validate_config({"train": train})
    return TrainSettings.from_config(
        config["train"], mode="experiment", gpus=2, tfrecord_dir=tmp_path, out_dir=tmp_path / "out"
    )


def test_suggestions_are_numbered_recorded_and_each_end_is_told_as_it_ended(tmp_path):
    run = settings(tmp_path)
    searcher = NumberedOptunaSearch(run)
    first, second = searcher.suggest("tune_a"), searcher.suggest("tune_b")
    proposals = [proposal_of(first), proposal_of(second)]
    assert [p.number for p in proposals] == [0, 1]
    assert first["trial"]["trial_id"] == proposals[0].trial_id  # what the trainable trains
    assert proposals[0].trial_id.startswith("s000_") and proposals[1].trial_id.startswith("s001_")
    # The local runner's sampler, same seed: the first (random) proposals are its own.
    local = Search.open(run.search, run.search_space, None)
    assert [local.ask().hparams for _ in range(2)] == [p.hparams for p in proposals]
    assert isinstance(proposals[0].hparams, HParams)

    # a: ASHA stops it after epoch 1 of 2 (PRUNED); b: trains both epochs (COMPLETE).
    # (Tune adds training_iteration to every result: the epoch here.)
    searcher.on_trial_result("tune_a", {"epoch": 1, "val_dice": 0.3, "training_iteration": 1})
    searcher.on_trial_complete("tune_a", {"epoch": 1, "val_dice": 0.3})
    for epoch, dice in ((1, 0.4), (2, 0.6)):
        result = {"epoch": epoch, "val_dice": dice, "training_iteration": epoch}
        searcher.on_trial_result("tune_b", result)
    searcher.on_trial_complete("tune_b", {"epoch": 2, "val_dice": 0.6})
    # c: its trainable raised (FAIL); d: its Dice diverged to NaN (FAIL, no value).
    searcher.suggest("tune_c")
    searcher.on_trial_complete("tune_c", None, error=True)
    searcher.suggest("tune_d")
    searcher.on_trial_complete("tune_d", {"epoch": 2, "val_dice": float("nan")})
    searcher.on_trial_complete("tune_d", {"epoch": 2, "val_dice": 0.9})  # told once only

    tells = [e for e in read_search_events(run.out_dir) if e.event == "tell"]
    assert [(e.number, e.state, e.value) for e in tells] == [
        (0, "PRUNED", pytest.approx(0.3)),
        (1, "COMPLETE", pytest.approx(0.6)),
        (2, "FAIL", None),
        (3, "FAIL", None),
    ]
    assert tells[0].steps == {"1": pytest.approx(0.3)}
    assert tells[1].steps == {"1": pytest.approx(0.4), "2": pytest.approx(0.6)}
    asks = [e for e in read_search_events(run.out_dir) if e.event == "ask"]
    assert [e.number for e in asks] == [0, 1, 2, 3]
    assert all(e.time <= t.time for e, t in zip(asks, tells, strict=True))


def test_a_restored_searcher_telling_again_leaves_one_tell_in_the_record(tmp_path):
    # Tune saved the searcher before the tell; the driver died after it. Restored, the
    # searcher has the trial open again and Tune completes it once more.
    run = settings(tmp_path)
    searcher = NumberedOptunaSearch(run)
    searcher.suggest("tune_a")
    searcher.on_trial_complete("tune_a", {"epoch": 2, "val_dice": 0.6})
    searcher._completed_trials.discard("tune_a")  # as the state saved before the tell holds
    searcher.on_trial_complete("tune_a", {"epoch": 2, "val_dice": 0.6})
    tells = [e.number for e in read_search_events(run.out_dir) if e.event == "tell"]
    assert tells == [0]
