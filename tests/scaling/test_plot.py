"""Scaling figures: every figure is written as a readable PNG and a PDF; references checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from distmis.errors import ConfigError
from distmis.scaling.plot import (
    Reference,
    parse_references,
    plot_efficiency,
    plot_makespan,
    plot_speedup,
    plot_timeline,
    timeline_stem,
)
from distmis.scaling.table import scaling_table
from distmis.scaling.timings import Run, load_runs
from tests.scaling.helpers import REFERENCES, assert_figure, make_results, write_run


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return make_results(tmp_path / "train")


def test_speedup_efficiency_makespan_figures(results: Path, tmp_path: Path):
    table = scaling_table(load_runs(results))
    references = parse_references(REFERENCES)
    out = tmp_path / "fig"
    assert_figure(out / "speedup", plot_speedup(table, out / "speedup", references))
    assert_figure(out / "efficiency", plot_efficiency(table, out / "efficiency"))
    assert_figure(out / "makespan", plot_makespan(table, out / "makespan"))


def test_figures_with_missing_base(tmp_path: Path):
    write_run(tmp_path / "train", "data", 2, 80.0)
    write_run(tmp_path / "train", "data", 4, 50.0)
    table = scaling_table(load_runs(tmp_path / "train"))
    out = tmp_path / "fig"
    assert_figure(out / "speedup", plot_speedup(table, out / "speedup"))
    assert_figure(out / "efficiency", plot_efficiency(table, out / "efficiency"))


def test_timeline_figure(results: Path, tmp_path: Path):
    run = Run.from_dir(results / "torch" / "experiment" / "4gpu")
    assert timeline_stem(run) == "timeline_torch_experiment_4gpu"
    stem = tmp_path / "fig" / timeline_stem(run)
    assert_figure(stem, plot_timeline(run, stem))


def test_references_are_checked():
    assert parse_references(None) == []
    assert parse_references(REFERENCES)[1] == Reference(
        "original DistMIS, data parallelism", "data", 32, 14.0
    )
    with pytest.raises(ConfigError, match=r"report\.references\[0\] needs label"):
        parse_references([{"mode": "data", "gpus": 32, "speedup": 14}])
    with pytest.raises(ConfigError, match=r"report\.references\[0\]: gpus must be >= 1"):
        parse_references([{"label": "x", "mode": "data", "gpus": 0, "speedup": 14}])
