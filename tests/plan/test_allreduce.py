"""The ring formula and its fit, on synthetic points whose bandwidth and latency are known."""

from __future__ import annotations

import math

import pytest

from distmis.plan.allreduce import (
    DEFAULT_BANDWIDTH,
    DEFAULT_LATENCY_SECONDS,
    fit_ring,
    ring_allreduce_seconds,
)

BYTES = 1_612_932  # 403,233 float32 parameters


def test_ring_formula_at_a_known_bandwidth():
    # 4 workers: 2 * 3/4 = 1.5 buffers over 1 GB/s, plus 2 rounds of 1 ms.
    assert ring_allreduce_seconds(4, BYTES, 1e9, 1e-3) == pytest.approx(1.5 * BYTES / 1e9 + 2e-3)
    assert ring_allreduce_seconds(2, 1000, 1000.0, 0.0) == pytest.approx(1.0)
    assert ring_allreduce_seconds(1, BYTES, 1e9, 1e-3) == 0.0


def test_two_points_recover_bandwidth_and_latency():
    bandwidth, latency = 2e9, 5e-4
    measured = {w: ring_allreduce_seconds(w, BYTES, bandwidth, latency) for w in (2, 4)}
    fit = fit_ring(measured, BYTES)
    assert fit.bandwidth == pytest.approx(bandwidth)
    assert fit.latency_seconds == pytest.approx(latency)
    assert (fit.points, fit.source) == (2, "measured")


def test_one_point_is_explained_by_bandwidth_alone():
    fit = fit_ring({2: 0.5}, 1000.0)  # 2 * 1/2 * 1000 bytes in 0.5 s
    assert fit.bandwidth == pytest.approx(2000.0)
    assert fit.latency_seconds == 0.0


def test_points_falling_with_workers_fit_no_negative_latency():
    # Cheaper at 4 than at 2: the unconstrained fit needs latency -0.7 s. Of the two
    # one-unknown fits, bandwidth alone (x = (1000*0.5 + 1500*0.4) / (1000² + 1500²), squared
    # residuals 0.038) beats latency alone (L = 0.26, squared residuals 0.072).
    fit = fit_ring({2: 0.5, 4: 0.4}, 1000.0)
    assert fit.latency_seconds == 0.0
    assert fit.seconds_per_byte == pytest.approx(1100 / 3.25e6)


def test_all_zero_points_mean_no_per_byte_cost():
    fit = fit_ring({2: 0.0, 4: 0.0}, BYTES)
    assert math.isinf(fit.bandwidth)
    assert fit.latency_seconds == 0.0


def test_no_points_fall_back_to_the_defaults():
    fit = fit_ring({1: 0.0}, BYTES)
    assert (fit.bandwidth, fit.latency_seconds) == (DEFAULT_BANDWIDTH, DEFAULT_LATENCY_SECONDS)
    assert fit.source == "default"
