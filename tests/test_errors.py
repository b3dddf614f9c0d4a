"""Every DistmisError crosses a process boundary (process pools, Ray workers) intact."""

from __future__ import annotations

import inspect
import pickle

import pytest

from distmis import errors

SUBCLASSES = sorted(
    (
        c
        for _, c in inspect.getmembers(errors, inspect.isclass)
        if issubclass(c, errors.DistmisError)
    ),
    key=lambda c: c.__name__,
)


def _example(cls: type) -> errors.DistmisError:
    """An instance built with as many string arguments as its constructor takes."""
    required = [
        p
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name != "self" and p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD
    ]
    # Sizes are numbers (CacheSpaceError's bytes); everything else a string naming itself.
    values = [1 if p.annotation in (int, "int") else f"{cls.__name__}-{p.name}" for p in required]
    return cls(*values) if required else cls("the problem")


def test_every_subclass_is_checked():
    assert {c.__name__ for c in SUBCLASSES} >= {"CaseError", "ConfigError", "ContractError"}


@pytest.mark.parametrize("cls", SUBCLASSES, ids=lambda c: c.__name__)
def test_error_pickles_with_its_message_and_fields(cls):
    error = _example(cls)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert str(copy) == str(error)
    assert vars(copy) == vars(error)


def test_case_error_keeps_case_and_problem():
    copy = pickle.loads(pickle.dumps(errors.CaseError("BRATS_002", "expected 4 channels, got 3")))
    assert (copy.case_id, copy.problem) == ("BRATS_002", "expected 4 channels, got 3")
    assert str(copy) == "case BRATS_002: expected 4 channels, got 3"
