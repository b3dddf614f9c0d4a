"""List scheduling in grid order, checked against schedules worked out by hand."""

from __future__ import annotations

import pytest

from distmis.plan.schedule import simulate


def test_five_equal_trials_on_two_slots_run_in_three_waves():
    schedule = simulate([4.0] * 5, slots=2)
    assert schedule.start_seconds == (0.0, 0.0, 4.0, 4.0, 8.0)
    assert schedule.end_seconds == (4.0, 4.0, 8.0, 8.0, 12.0)
    assert schedule.slot == (0, 1, 0, 1, 0)
    assert schedule.makespan_seconds == 12.0


def test_a_straggler_holds_its_slot_while_the_others_share_the_other():
    schedule = simulate([10.0, 1.0, 1.0, 1.0], slots=2)
    assert schedule.slot == (0, 1, 1, 1)
    assert schedule.start_seconds == (0.0, 0.0, 1.0, 2.0)
    assert schedule.makespan_seconds == 10.0


def test_each_trial_takes_the_slot_that_frees_first():
    # Slot 1 frees at 2 before slot 0 at 5, so trial 2 goes there; trial 3 then takes slot 0.
    schedule = simulate([5.0, 2.0, 4.0, 1.0], slots=2)
    assert schedule.slot == (0, 1, 1, 0)
    assert schedule.start_seconds == (0.0, 0.0, 2.0, 5.0)
    assert schedule.makespan_seconds == 6.0


def test_more_slots_than_trials_leaves_slots_idle():
    schedule = simulate([3.0, 7.0], slots=8)
    assert schedule.start_seconds == (0.0, 0.0)
    assert schedule.slot == (0, 1)
    assert schedule.makespan_seconds == 7.0


def test_one_slot_runs_trials_back_to_back():
    schedule = simulate([1.0, 2.0, 3.0], slots=1)
    assert schedule.start_seconds == (0.0, 1.0, 3.0)
    assert schedule.makespan_seconds == 6.0


def test_no_trials_take_no_time():
    schedule = simulate([], slots=4)
    assert schedule.start_seconds == ()
    assert schedule.makespan_seconds == 0.0


@pytest.mark.parametrize(("durations", "slots"), [([1.0], 0), ([-1.0], 1)])
def test_impossible_inputs_are_refused(durations, slots):
    with pytest.raises(ValueError):
        simulate(durations, slots)


def test_a_used_slot_waits_the_relaunch_before_its_next_trial():
    # Slot 0 runs 3 s, waits 1 s, then the third trial; a fresh slot starts at once.
    schedule = simulate([3.0, 5.0, 2.0], slots=2, relaunch_seconds=1.0)
    assert schedule.start_seconds == (0.0, 0.0, 4.0)
    assert schedule.slot == (0, 1, 0)
    assert schedule.makespan_seconds == 6.0


def test_teardown_follows_the_last_trial():
    from distmis.plan.schedule import Schedule

    assert Schedule((0.0,), (4.0,), (0,), 1, teardown_seconds=0.5).makespan_seconds == 4.5


def test_the_first_wave_starts_spread_over_its_measured_spread():
    # Three fresh slots spread over 2 s start at 0, 1 and 2; the fourth trial takes the slot
    # that frees first (slot 0 at 3), a used slot, so after the relaunch.
    schedule = simulate(
        [3.0, 3.0, 3.0, 1.0], 3, relaunch_seconds=0.5, first_wave_spread_seconds=2.0
    )
    assert schedule.start_seconds == (0.0, 1.0, 2.0, 3.5)
    assert schedule.slot == (0, 1, 2, 0)
    assert schedule.makespan_seconds == 5.0


def test_a_wave_smaller_than_the_slots_spreads_over_its_own_trials():
    schedule = simulate([1.0, 1.0], 8, first_wave_spread_seconds=3.0)
    assert schedule.start_seconds == (0.0, 3.0)
