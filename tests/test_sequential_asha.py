"""ASHA's rule for configurations trained one after another: hand-computed cutoffs, Ray's own
scheduler fed the same results, and the state rebuilt from the trials' epochs.jsonl."""

from __future__ import annotations

import math
import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from distmis.run_folder import EpochRecord, append_epoch
from distmis.sequential_asha import AshaRule, SequentialASHA


def test_rungs_sit_at_grace_times_factor_powers_up_to_max_t():
    assert AshaRule(8, 1, 2).milestones == [8, 4, 2, 1]
    assert AshaRule(3, 1, 2).milestones == [2, 1]
    assert AshaRule(9, 1, 3).milestones == [9, 3, 1]
    # as experiment mode caps it: grace period at most the epochs
    assert AshaRule.for_epochs(2, 5, 3) == AshaRule(2, 2, 3)
    assert AshaRule.for_epochs(2, 5, 3).milestones == [2]
    with pytest.raises(ValueError, match="reduction_factor >= 2"):
        AshaRule(4, 1, 1)


def test_a_small_rung_stops_only_below_the_percentile_not_on_rank():
    # Optuna's SuccessiveHalving prunes the third (it ranks below the first); Ray's rule
    # compares with the median of 0.197 and 0.118, 0.1575, and lets it go on.
    asha = SequentialASHA(AshaRule(4, 1, 2))
    assert asha.on_result("a", 1, 0.197) is False  # nothing recorded before it
    assert asha.on_result("b", 1, 0.118) is True  # below 0.197
    assert asha.cutoff(1) == pytest.approx(0.1575)
    assert asha.on_result("c", 1, 0.177) is False
    assert asha.stopped == {"b": 1}
    # a stopped configuration's value stays recorded and counts for later ones
    assert asha.rungs[1] == {"a": 0.197, "b": 0.118, "c": 0.177}
    assert asha.cutoff(1) == pytest.approx(0.177)  # median of three
    assert asha.on_result("d", 1, 0.176) is True


def test_the_cutoff_is_numpys_linear_percentile_of_one_minus_one_over_factor():
    asha = SequentialASHA(AshaRule(9, 1, 3))
    for trial_id, value in (("a", 0.1), ("b", 0.3), ("c", 0.2)):
        asha.on_result(trial_id, 1, value)
    # c was compared with (0.1, 0.3): their 66.7th percentile is 0.1 + 2/3 * 0.2 = 0.2333
    assert asha.stopped == {"c": 1}
    # now (0.1, 0.3, 0.2): position 2/3 * 2 = 1.333 of (0.1, 0.2, 0.3) -> 0.2333
    assert asha.cutoff(1) == pytest.approx(0.2 + 0.1 / 3)
    assert asha.on_result("d", 1, 0.23) is True
    assert asha.on_result("e", 1, 0.24) is False


def test_each_rung_is_met_once_and_max_t_ends_without_a_record():
    asha = SequentialASHA(AshaRule(4, 1, 2))
    for epoch, value in ((1, 0.5), (2, 0.6), (3, 0.1), (4, 0.0)):
        assert asha.on_result("a", epoch, value) is False
    assert asha.rungs == {4: {}, 2: {"a": 0.6}, 1: {"a": 0.5}}
    # b: rung 1 passes, epoch 2 trails a's 0.6 at rung 2
    assert asha.on_result("b", 1, 0.9) is False
    assert asha.on_result("b", 2, 0.55) is True
    # an epoch retrained after a restart meets its own value at the rung: it goes on
    asha2 = SequentialASHA(AshaRule(4, 1, 2))
    asha2.on_result("a", 1, 0.5)
    assert asha2.on_result("b", 1, 0.6) is False
    assert asha2.on_result("b", 1, 0.0) is False and asha2.rungs[1]["b"] == 0.6
    # an epoch past a rung it skipped (grace 2: rung 2 first) is compared there
    asha3 = SequentialASHA(AshaRule(8, 2, 2))
    assert asha3.on_result("a", 1, 0.5) is False and asha3.rungs[2] == {}
    assert asha3.on_result("a", 3, 0.5) is False and asha3.rungs[2] == {"a": 0.5}


def test_nan_never_stops_and_is_left_out_of_cutoffs():
    asha = SequentialASHA(AshaRule(4, 1, 2))
    assert asha.on_result("a", 1, math.nan) is False
    assert asha.on_result("b", 1, 0.0) is False  # the cutoff of (NaN) is NaN
    assert asha.on_result("c", 1, math.nan) is False
    assert asha.cutoff(1) == 0.0  # NaN left out
    assert asha.on_result("d", 1, -0.1) is True


def test_it_stops_what_rays_asha_scheduler_stops_given_the_same_results():
    from ray.tune.schedulers import ASHAScheduler

    rng = random.Random(7)
    for epochs, grace, factor in ((8, 1, 2), (9, 1, 3), (6, 2, 2), (3, 5, 2)):
        rule = AshaRule.for_epochs(epochs, grace, factor)
        ray_asha = ASHAScheduler(
            time_attr="epoch",
            metric="val_dice",
            mode="max",
            max_t=epochs,
            grace_period=min(grace, epochs),
            reduction_factor=factor,
        )
        ours = SequentialASHA(rule)
        for index in range(12):
            trial = SimpleNamespace(trial_id=f"t{index}")
            ray_asha.on_trial_add(None, trial)
            final, speed = rng.uniform(0.3, 0.9), rng.uniform(0.5, 4.0)
            for epoch in range(1, epochs + 1):
                value = final * (1 - math.exp(-epoch / speed)) + rng.uniform(-0.02, 0.02)
                ray_stops = ray_asha.on_trial_result(
                    None, trial, {"epoch": epoch, "val_dice": value}
                )
                we_stop = ours.on_result(trial.trial_id, epoch, value)
                assert (ray_stops == "STOP") == (we_stop or epoch >= epochs), (rule, index, epoch)
                if ray_stops == "STOP":
                    break
        # the curves are spread enough to stop some, where a rung lies below max_t
        assert bool(ours.stopped) == (rule.grace_period < epochs), rule


def write_epochs(folder: Path, first_time: float, values: list[tuple[int, float]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for offset, (epoch, value) in enumerate(values):
        record = EpochRecord(
            epoch=epoch,
            time=first_time + offset,
            started=first_time + offset - 1,
            train_seconds=0.5,
            val_seconds=0.5,
            metrics={"val_dice": value, "loss": 1.0},
        )
        append_epoch(folder, record)


def test_the_state_is_rebuilt_from_epochs_in_the_order_configurations_trained(tmp_path):
    rule = AshaRule(4, 1, 2)
    folders = {name: tmp_path / name for name in ("a", "b", "c", "d")}
    # Trained c, a, b (not grid order); d never started. a was restarted after its epoch 2
    # and retrained epoch 2 to another value, which its first one decided; b stopped at rung 1.
    write_epochs(folders["c"], 100.0, [(1, 0.3), (2, 0.4), (3, 0.45), (4, 0.5)])
    write_epochs(folders["a"], 200.0, [(1, 0.35), (2, 0.5), (2, 0.2), (3, 0.5), (4, 0.6)])
    write_epochs(folders["b"], 300.0, [(1, 0.1)])
    rebuilt = SequentialASHA.from_trial_folders(rule, folders)
    assert rebuilt.rungs == {4: {}, 2: {"c": 0.4, "a": 0.5}, 1: {"c": 0.3, "a": 0.35, "b": 0.1}}
    assert rebuilt.stopped == {"b": 1}
    # and it goes on deciding as the uninterrupted run would: d meets (0.3, 0.35, 0.1)
    assert rebuilt.cutoff(1) == pytest.approx(0.3)
    assert rebuilt.on_result("d", 1, 0.29) is True
