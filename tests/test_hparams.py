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
