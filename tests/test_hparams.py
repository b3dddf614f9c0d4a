"""The hyperparameter table and everything derived from it: fields, grid, trial ids."""

from __future__ import annotations

import pickle
from dataclasses import fields

import pytest

from distmis.config import load_schema
from distmis.hparams import HYPERPARAMETERS, NAMES, HParams, expand_grid

PAPER_GRID = {
    "lr": [1e-4, 5e-4, 1e-3, 5e-3],
    "norm": ["batch", "group"],
    "beta_2": [0.99, 0.999],
    "amsgrad": [True, False],
}


def test_one_table_gives_the_fields_the_schema_keys_and_the_builders():
    assert tuple(f.name for f in fields(HParams)) == NAMES == ("lr", "norm", "beta_2", "amsgrad")
    space = load_schema()["properties"]["train"]["properties"]["search_space"]["properties"]
    assert tuple(space) == NAMES
    hp = HParams()
    assert {**hp.model_kwargs(), **hp.optimizer_kwargs()} == hp.to_dict()
    assert hp.model_kwargs() == {"norm": "batch"}


def test_trial_ids_are_those_results_folders_are_named_by():
    grid = expand_grid(PAPER_GRID)
    assert len(grid) == 32
    assert [hp.trial_id for hp in grid[:3]] == [
        "lr=0.0001_norm=batch_beta2=0.99_amsgrad=1",
        "lr=0.0001_norm=batch_beta2=0.99_amsgrad=0",
        "lr=0.0001_norm=batch_beta2=0.999_amsgrad=1",
    ]
    assert grid[-1].trial_id == "lr=0.005_norm=group_beta2=0.999_amsgrad=0"
    assert HParams(lr=0.001, beta_2=0.999, amsgrad=True).trial_id == (
        "lr=0.001_norm=batch_beta2=0.999_amsgrad=1"
    )


def test_values_are_cast_to_the_tables_types():
    (hp,) = expand_grid({"lr": [1], "norm": ["group"], "beta_2": [0.9], "amsgrad": [0]})
    assert (type(hp.lr), hp.amsgrad) == (float, False)
    assert (
        HParams.from_dict({"lr": "0.01", "norm": "batch", "beta_2": 0.9, "amsgrad": 1}).lr == 0.01
    )


def test_a_payload_or_space_that_does_not_match_the_table_fails():
    with pytest.raises(KeyError, match=r"missing \['amsgrad'\], unknown \['amsgrd'\]"):
        HParams.from_dict({"lr": 0.1, "norm": "batch", "beta_2": 0.9, "amsgrd": True})
    with pytest.raises(ValueError, match="lacks"):
        expand_grid({"lr": [0.1]})
    with pytest.raises(ValueError, match=r"unknown hyperparameters \['momentum'\]"):
        expand_grid({**PAPER_GRID, "momentum": [0.9]})
    with pytest.raises(ValueError, match="search_space.lr: expected a list"):
        expand_grid({**PAPER_GRID, "lr": 0.1})


def test_a_configuration_crosses_processes_and_is_its_own_one_trial_space():
    hp = HParams(lr=5e-3, norm="group")
    assert pickle.loads(pickle.dumps(hp)) == hp
    assert HParams.from_dict(hp.to_dict()) == hp
    assert expand_grid(hp.as_space()) == [hp]
    assert all(h.default == getattr(HParams(), h.name) for h in HYPERPARAMETERS)


def test_a_distribution_samples_within_its_bounds_and_states_itself_to_optuna():
    import numpy as np
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    from distmis.hparams import BY_NAME, Choice, Grid, IntRange, LogUniform, Uniform

    lr = BY_NAME["lr"]
    assert lr.domain({"loguniform": [1e-5, 1e-2]}) == LogUniform(1e-5, 1e-2)
    assert lr.domain({"uniform": [1, 2]}) == Uniform(1, 2)
    assert lr.domain({"choice": [1, "0.5"]}) == Choice((1.0, 0.5))
    assert lr.domain([0.1]) == Grid((0.1,))
    rng = np.random.default_rng(0)
    draws = [LogUniform(1e-5, 1e-1).sample(rng) for _ in range(200)]
    assert all(1e-5 <= d <= 1e-1 and type(d) is float for d in draws)
    assert sum(d < 1e-3 for d in draws) > 60  # log-uniform: half the decades below 1e-3
    assert {IntRange(2, 4).sample(rng) for _ in range(100)} == {2, 3, 4}
    assert {Choice((True, False)).sample(rng) for _ in range(50)} == {True, False}
    assert LogUniform(1e-5, 1e-2).to_optuna() == FloatDistribution(1e-5, 1e-2, log=True)
    assert Uniform(0.9, 0.99).to_optuna() == FloatDistribution(0.9, 0.99)
    assert IntRange(2, 5).to_optuna() == IntDistribution(2, 5)
    assert Grid(("batch", "group")).to_optuna() == CategoricalDistribution(("batch", "group"))


@pytest.mark.parametrize(
    ("name", "entry", "message"),
    [
        ("lr", {"loguniform": [1e-2, 1e-3]}, "needs low < high, got 0.01, 0.001"),
        ("lr", {"loguniform": [-1, 1e-3]}, "needs low > 0, got -1"),
        ("lr", {"int": [1, 2]}, "{int: ...} draws ints; lr is a float"),
        ("norm", {"uniform": [0, 1]}, "{uniform: ...} draws floats; norm is a str"),
        ("amsgrad", {"loguniform": [1, 2]}, "amsgrad is a bool"),
        ("lr", {"uniform": [1, True]}, "needs two numbers"),
        ("lr", {"choice": []}, "needs a list of values"),
        ("lr", {"choice": ["fast"]}, "lr takes float values, got ['fast']"),
        ("lr", [], "expected a list of values or a distribution"),
    ],
)
def test_a_bad_domain_names_its_key(name, entry, message):
    from distmis.hparams import BY_NAME

    with pytest.raises(ValueError) as excinfo:
        BY_NAME[name].domain(entry)
    assert str(excinfo.value).startswith(f"search_space.{name}: ")
    assert message in str(excinfo.value)


def test_int_bounds_must_be_whole_numbers():
    from dataclasses import replace

    from distmis.hparams import BY_NAME, IntRange

    depth = replace(BY_NAME["lr"], name="depth", type=int)  # a would-be integer hyperparameter
    assert depth.domain({"int": [2, 5.0]}) == IntRange(2, 5)
    with pytest.raises(
        ValueError, match=r"search_space\.depth: \{int: \[low, high\]\} needs integers"
    ):
        depth.domain({"int": [2, 4.5]})


def test_the_grid_refuses_a_distribution():
    with pytest.raises(
        ValueError, match=r"search_space\.lr: a distribution \(\{uniform: \.\.\.\}\)"
    ):
        expand_grid({**PAPER_GRID, "lr": {"uniform": [1e-3, 1e-2]}})
