"""The parallelism modes as one registry (:mod:`distmis.modes`): what each mode is, and that
nothing else spells a mode out."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import distmis
from distmis import modes


@pytest.mark.parametrize(
    ("name", "gpus", "k", "workers", "at_once", "folder"),
    [
        ("data", 8, None, 8, 1, "data"),
        ("experiment", 8, None, 1, 8, "experiment"),
        ("hybrid", 8, 2, 2, 4, "hybrid2"),
        ("hybrid", 8, 8, 8, 1, "hybrid8"),
    ],
)
def test_each_mode_spends_g_gpus_its_way(name, gpus, k, workers, at_once, folder):
    mode = modes.get(name)
    assert mode.workers_per_trial(gpus, k) == workers
    assert mode.trials_at_once(gpus, k) == at_once
    assert mode.folder(k) == folder
    assert modes.from_folder(folder) == (mode, k)


def test_hybrid_needs_a_k_that_divides_g():
    assert modes.HYBRID.gpu_counts([1, 2, 3, 4, 6, 8], 2) == [2, 4, 6, 8]
    assert modes.HYBRID.k_problem(6, 4) and modes.HYBRID.k_problem(4, 1)
    assert modes.HYBRID.k_problem(4, 2) is None and modes.DATA.k_problem(4, None) is None
    with pytest.raises(ValueError, match="needs k"):
        modes.HYBRID.workers_per_trial(4)


@pytest.mark.parametrize("folder", ["hybrid", "data2", "hybrid1", "models", ""])
def test_a_folder_that_is_no_mode_is_refused(folder):
    with pytest.raises(ValueError, match="not a mode folder"):
        modes.from_folder(folder)


def test_every_mode_names_its_rule_and_a_runner_that_exists():
    import importlib

    rules = (Path(distmis.__file__).parents[2] / "rules" / "train.smk").read_text()
    for mode in modes.MODES.values():
        assert f"rule {mode.rule}:" in rules
        module, function = mode.runner.split(":")
        assert callable(getattr(importlib.import_module(module), function))
        assert mode.baseline in modes.MODES


def test_no_module_compares_a_mode_name_outside_the_registry_and_the_planners_model():
    """A mode is looked up, not spelled out: ``mode == "hybrid"`` outside modes.py (and the
    planner's model of how one mode's parts derive from another's, plan/parts.py) is how a
    new mode used to need twenty files."""
    spelled = re.compile(
        r"""[=!]= ["'](data|experiment|hybrid)["']|["'](data|experiment|hybrid)["'] in """
    )
    src = Path(distmis.__file__).parent
    found = [
        f"{path.relative_to(src)}:{number}"
        for path in sorted(src.rglob("*.py"))
        if path.name != "modes.py" and path.relative_to(src) != Path("plan/parts.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if spelled.search(line)
    ]
    assert found == []


def test_the_schema_allows_exactly_the_registered_modes():
    from distmis.config import load_schema

    train = load_schema()["properties"]["train"]["properties"]
    assert tuple(train["modes"]["items"]["enum"]) == modes.NAMES


def test_each_training_rule_names_its_mode():
    for mode in modes.MODES.values():
        assert modes.from_rule(mode.rule) is mode
    with pytest.raises(ValueError, match="not a training rule: 'scaling'"):
        modes.from_rule("scaling")
