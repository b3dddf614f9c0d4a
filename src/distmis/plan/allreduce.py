"""The all-reduce cost of one data-parallel step: a ring formula fitted to measured points.

A ring all-reduce of ``parameter_bytes`` over ``w`` workers sends ``2 (w - 1) / w`` times the
buffer over the slowest link, plus a per-round latency that grows with the tree depth::

    allreduce(w) = 2 (w - 1) / w × parameter_bytes / bandwidth + latency × log2(w)

(``allreduce(1) = 0``). Both unknowns enter linearly (as ``1 / bandwidth`` and ``latency``),
so :func:`fit_ring` fits them by least squares to the seconds per step measured at each worker
count, kept non-negative: with two or more worker counts both are fitted; with one, the
latency is 0 and the bandwidth explains the point; with none, :data:`DEFAULT_BANDWIDTH` and
:data:`DEFAULT_LATENCY_SECONDS` are used and the fit says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

RING_FORMULA = "allreduce(w) = 2(w-1)/w * parameter_bytes / bandwidth + latency * log2(w)"
# Used only when no run measured more than one worker: a PCIe-class link and a small
# per-round cost, deliberately conservative next to NVLink/NCCL.
DEFAULT_BANDWIDTH = 10e9  # bytes per second
DEFAULT_LATENCY_SECONDS = 50e-6  # per log2(w) round

SOURCE_FITTED = "measured"
SOURCE_DEFAULT = "default"


@dataclass(frozen=True)
class RingFit:
    """``seconds_per_byte`` is 1 / bandwidth (0: the points show no per-byte cost);
    ``points`` how many measurements (worker counts >= 2) it was fitted to."""

    seconds_per_byte: float
    latency_seconds: float
    points: int
    source: str

    @property
    def bandwidth(self) -> float:
        """Bytes per second (``math.inf`` when the fit found no per-byte cost)."""
        return math.inf if self.seconds_per_byte == 0 else 1.0 / self.seconds_per_byte


def ring_volume_factor(workers: int) -> float:
    """``2 (w - 1) / w``: how many buffers' worth each worker sends in a ring all-reduce."""
    return 2.0 * (workers - 1) / workers


def ring_allreduce_seconds(
    workers: int, parameter_bytes: float, bandwidth: float, latency_seconds: float
) -> float:
    """Seconds of one all-reduce of ``parameter_bytes`` over ``workers`` (the ring formula)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if workers == 1:
        return 0.0
    return ring_volume_factor(workers) * parameter_bytes / bandwidth + latency_seconds * math.log2(
        workers
    )


def fit_ring(measured: Mapping[int, float], parameter_bytes: float) -> RingFit:
    """Fit 1 / bandwidth and latency to ``measured`` ({workers: seconds per step}).

    Least squares on ``y = a x + d L`` with ``a = 2 (w - 1) / w × parameter_bytes``,
    ``d = log2(w)``, ``x = 1 / bandwidth`` >= 0 and ``L = latency`` >= 0; a negative
    unconstrained solution is replaced by the better of the two one-unknown fits. Points at
    one worker carry no information (no all-reduce) and are ignored.
    """
    points = [(w, float(s)) for w, s in sorted(measured.items()) if w >= 2]
    if not points:
        return RingFit(1.0 / DEFAULT_BANDWIDTH, DEFAULT_LATENCY_SECONDS, 0, SOURCE_DEFAULT)
    a = [ring_volume_factor(w) * parameter_bytes for w, _ in points]
    depth = [math.log2(w) for w, _ in points]
    y = [s for _, s in points]
    saa, sll, sal = _dot(a, a), _dot(depth, depth), _dot(a, depth)
    say, sly = _dot(a, y), _dot(depth, y)
    det = saa * sll - sal * sal
    # One distinct worker count makes the columns proportional (det ~ 0): latency is 0 then.
    if len({w for w, _ in points}) >= 2 and det > 1e-12 * saa * sll:
        x, latency = (say * sll - sly * sal) / det, (saa * sly - sal * say) / det
        if x >= 0 and latency >= 0:
            return RingFit(x, latency, len(points), SOURCE_FITTED)
        bandwidth_only = (max(say / saa, 0.0), 0.0)
        latency_only = (0.0, max(sly / sll, 0.0))
        x, latency = min(
            (bandwidth_only, latency_only),
            key=lambda c: sum(
                (ai * c[0] + di * c[1] - yi) ** 2 for ai, di, yi in zip(a, depth, y, strict=True)
            ),
        )
        return RingFit(x, latency, len(points), SOURCE_FITTED)
    return RingFit(max(say / saa, 0.0), 0.0, len(points), SOURCE_FITTED)


def _dot(u: list[float], v: list[float]) -> float:
    return sum(ui * vi for ui, vi in zip(u, v, strict=True))
