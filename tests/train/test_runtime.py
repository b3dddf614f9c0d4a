"""Starting Ray as training does: what its workers and Ray Train's controllers are given."""

from __future__ import annotations

import os

import pytest

from distmis.train.runtime import TRAIN_POLL_ENV, TRAIN_POLL_SECONDS, start_ray, stop_ray

pytestmark = pytest.mark.slow


def _worker_env(names: list[str]) -> dict[str, str | None]:
    import ray

    @ray.remote(num_cpus=1)
    def read(keys: list[str]) -> dict[str, str | None]:
        return {key: os.environ.get(key) for key in keys}

    return ray.get(read.remote(names))


def _controller_env() -> dict[str, str]:
    """What Ray Train hands from the process calling fit() to the controller it starts."""
    from ray.train.v2._internal.constants import get_env_vars_to_propagate

    return get_env_vars_to_propagate()


@pytest.mark.parametrize("preset", [None, "1.5"], ids=["default", "environment-set"])
def test_ray_train_polls_often_unless_the_environment_says_otherwise(preset, monkeypatch):
    # setenv first, so the variable start_ray writes is undone after the test either way.
    monkeypatch.setenv(TRAIN_POLL_ENV, preset or "unset")
    if preset is None:
        monkeypatch.delenv(TRAIN_POLL_ENV)
    expected = preset or str(TRAIN_POLL_SECONDS)
    try:
        start_ray(None, {"DISTMIS_BACKEND_VARIABLE": "yes"}, num_cpus=1, num_gpus=0)
        # Data mode: the driver calls fit(); hybrid mode: a Tune trial, a Ray worker.
        assert _controller_env()[TRAIN_POLL_ENV] == expected
        assert _worker_env([TRAIN_POLL_ENV, "DISTMIS_BACKEND_VARIABLE", "RAY_worker_niceness"]) == {
            TRAIN_POLL_ENV: expected,
            "DISTMIS_BACKEND_VARIABLE": "yes",
            "RAY_worker_niceness": "0",
        }
    finally:
        stop_ray()
