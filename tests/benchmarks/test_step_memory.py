"""benchmarks/step_memory.py: its arithmetic, its arguments and one tiny child run."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))  # as `python benchmarks/step_memory.py` runs
    try:
        yield importlib.import_module("step_memory")
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.mark.parametrize(("depth", "base"), [(3, 8), (2, 4)])
def test_activation_estimate_is_the_keras_models_layer_outputs(bench, depth, base):
    from distmis.backends.tensorflow.unet import build_unet

    shape = (16, 16, 8)
    model = build_unet((*shape, bench.IN_CHANNELS), 1, depth=depth, base_filters=base)
    arch = bench.Architecture(depth, base, "batch")
    voxels = shape[0] * shape[1] * shape[2]
    expected = bench.activation_floats_per_voxel(arch, bench.IN_CHANNELS, 1)
    assert bench.model_activation_floats(model, voxels) == pytest.approx(expected)


def test_fit_line_recovers_slope_and_intercept(bench):
    points = [(1000, 100 + 2000 / bench.MIB), (3000, 100 + 6000 / bench.MIB)]
    intercept, slope = bench.fit_line(points)
    assert intercept == pytest.approx(100)
    assert slope == pytest.approx(2.0)


def test_arguments(bench):
    args = bench.parse_args(["--sizes", "16x16x8", "--full", "--settings", "onednn0+tape"])
    assert args.sizes == [(16, 16, 8), bench.FULL_SIZE]
    with pytest.raises(SystemExit):
        bench.parse_args(["--sizes", "12x16x8"])  # 12 is not divisible by 2**3
    with pytest.raises(SystemExit):
        bench.parse_args(["--settings", "nosuch"])


def test_torch_child_reports_baseline_and_step_peaks(bench):
    result = bench.measure(
        "torch", (8, 8, 8), bench.Architecture(1, 2, "batch"), "default", 2, 1, 4
    )
    assert "error" not in result, result
    assert len(result["step_peaks_mib"]) == 2
    assert min(result["step_peaks_mib"]) > 0 and result["baseline_mib"] > 0
