"""The planner's figure on a hand-built plan.csv: files written, lines counted, bad input named."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from distmis.errors import ContractError
from distmis.plan.plot import PLOT_COLUMNS, build_plan_figure, plot_plan, read_plan_csv
from distmis.scaling.plot import Reference
from distmis.scaling.style import mode_colour
from tests.scaling.helpers import assert_figure

NAN = math.nan
REFERENCES = [
    Reference("original DistMIS, experiment parallelism", "experiment", 32, 12.0),
    Reference("original DistMIS, data parallelism", "data", 32, 14.0),
]
PROJECTED_ASSUMPTIONS = json.dumps(
    {
        "grid_size": {"value": 32, "source": "flag", "detail": ""},
        "volume_shape": {"value": [240, 240, 152], "source": "flag", "detail": ""},
    }
)


def row(backend, study, mode, k, gpus, speedup, measured=NAN, step=0.5, assumptions="{}"):
    return {
        "backend": backend,
        "study": study,
        "mode": mode,
        "gpus_per_trial": k,
        "gpus": gpus,
        "predicted_makespan_seconds": 100.0 / speedup,
        "speedup": speedup,
        "efficiency": speedup / gpus,
        "gpu_hours": 100.0 / speedup * gpus / 3600,
        "measured_makespan_seconds": NAN if math.isnan(measured) else 100.0 / measured,
        "measured_speedup": measured,
        "relative_error": NAN,
        "loo_relative_error": NAN,
        "step_seconds": step,
        "step_seconds_source": "measured",
        "assumptions": assumptions,
    }


def measured_rows() -> list[dict]:
    """Four measured-study series: tensorflow data (measured at G = 1, 2), experiment
    (measured at G = 1, 4), hybrid2 (none measured); torch data (none measured)."""
    return [
        row("tensorflow", "measured", "data", 1, 1, 1.0, measured=1.0),
        row("tensorflow", "measured", "data", 2, 2, 1.8, measured=1.7),
        row("tensorflow", "measured", "data", 4, 4, 3.0),
        row("tensorflow", "measured", "experiment", 1, 1, 1.0, measured=1.0),
        row("tensorflow", "measured", "experiment", 1, 2, 1.9),
        row("tensorflow", "measured", "experiment", 1, 4, 3.6, measured=3.5),
        row("tensorflow", "measured", "hybrid", 2, 2, 0.9),
        row("tensorflow", "measured", "hybrid", 2, 4, 1.8),
        row("torch", "measured", "data", 1, 1, 1.0),
        row("torch", "measured", "data", 2, 2, 1.6),
    ]


def projected_rows() -> list[dict]:
    """Two projected series, tensorflow data and experiment at G = 1..32, an H200-like step."""
    rows = []
    for g in (1, 2, 4, 8, 16, 32):
        rows.append(
            row(
                "tensorflow",
                "projected",
                "data",
                g,
                g,
                g**0.9,
                step=0.2,
                assumptions=PROJECTED_ASSUMPTIONS,
            )
        )
        rows.append(
            row(
                "tensorflow",
                "projected",
                "experiment",
                1,
                g,
                g**0.95,
                step=0.2,
                assumptions=PROJECTED_ASSUMPTIONS,
            )
        )
    return rows


@pytest.fixture
def plan_csv(tmp_path: Path) -> Path:
    """A plan.csv as distmis plan writes it: measured cells blank where nothing was measured."""
    path = tmp_path / "plan.csv"
    pd.DataFrame(measured_rows() + projected_rows()).to_csv(path, index=False)
    return path


def test_plan_figure_is_written_as_png_and_pdf(plan_csv: Path, tmp_path: Path):
    stem = tmp_path / "fig" / "plan"
    stem.parent.mkdir()
    assert_figure(stem, plot_plan(read_plan_csv(plan_csv), stem, REFERENCES))


def test_each_series_is_one_line_and_each_measurement_a_filled_marker(plan_csv: Path):
    figure = build_plan_figure(read_plan_csv(plan_csv), REFERENCES)
    measured, projected = figure.axes
    # Measured panel: 4 predicted lines, then 2 lines of measured markers (tensorflow data
    # and experiment; hybrid2 and torch data have no measurement). No ideal, no references.
    lines = measured.get_lines()
    assert len(lines) == 4 + 2
    predicted = [line for line in lines if line.get_linestyle() != "None"]
    data_measured, experiment_measured = [line for line in lines if line not in predicted]
    assert list(data_measured.get_xdata()) == [1, 2]
    assert list(data_measured.get_ydata()) == [1.0, 1.7]
    assert data_measured.get_color() == mode_colour("data")
    assert data_measured.get_markerfacecolor() == mode_colour("data")  # filled
    assert list(experiment_measured.get_ydata()) == [1.0, 3.5]
    assert experiment_measured.get_color() == mode_colour("experiment")
    # Predicted lines in order data, experiment, hybrid2 (tensorflow), data (torch), with
    # open markers.
    assert [line.get_color() for line in predicted] == [
        mode_colour("data"),
        mode_colour("experiment"),
        mode_colour("hybrid2"),
        mode_colour("data"),
    ]
    assert {line.get_markerfacecolor() for line in predicted} == {"white"}
    assert list(predicted[2].get_xdata()) == [2, 4]  # hybrid2 starts at G = k
    assert list(predicted[0].get_ydata()) == [1.0, 1.8, 3.0]
    assert [predicted[0].get_linestyle(), predicted[3].get_linestyle()] == ["-", "--"]
    # Projected panel: 2 predicted lines, the ideal, one star per reference.
    lines = projected.get_lines()
    assert len(lines) == 2 + 1 + 2
    assert list(lines[2].get_xdata()) == [1, 32] and list(lines[2].get_ydata()) == [1, 32]
    assert [line.get_marker() for line in lines[3:]] == ["*", "*"]
    assert [(line.get_xdata()[0], line.get_ydata()[0]) for line in lines[3:]] == [
        (32, 12.0),
        (32, 14.0),
    ]
    assert "Projection: 32-configuration grid, 240×240×152, step 0.2 s" in projected.get_title()
    # One legend below both panels: 4 series (projected ones repeat measured labels), the
    # ideal, 2 references and the key to measured markers.
    (legend,) = figure.legends
    assert len(legend.get_texts()) == 4 + 1 + 2 + 1
    assert [ax.get_xscale() for ax in figure.axes] == ["log", "log"]
    assert list(projected.get_xticks()) == [1, 2, 4, 8, 16, 32]


def test_without_projected_rows_there_is_one_panel(tmp_path: Path):
    figure = build_plan_figure(pd.DataFrame(measured_rows()), REFERENCES)
    (ax,) = figure.axes
    assert len(ax.get_lines()) == 6  # references belong to the projection only
    assert list(ax.get_xticks()) == [1, 2, 4]


def test_a_plan_without_an_assumptions_shape_still_titles_the_projection():
    rows = [
        row("torch", "projected", "data", g, g, float(g), assumptions="not json") for g in (1, 2)
    ]
    (ax,) = build_plan_figure(pd.DataFrame(rows), ()).axes
    assert ax.get_title() == "Projection: step 0.5 s\n(predicted)"


@pytest.mark.parametrize("column", ["measured_speedup", "study"])
def test_a_plan_missing_a_column_names_the_file_and_its_rule(plan_csv: Path, column: str):
    assert column in PLOT_COLUMNS
    pd.read_csv(plan_csv).drop(columns=column).to_csv(plan_csv, index=False)
    with pytest.raises(ContractError, match=rf"{plan_csv}.*{column}.*rule plan / distmis plan"):
        read_plan_csv(plan_csv)


def test_a_missing_plan_names_the_file_and_its_rule(tmp_path: Path):
    path = tmp_path / "plan.csv"
    with pytest.raises(ContractError, match=rf"{path} is missing.*rule plan / distmis plan"):
        read_plan_csv(path)


@pytest.mark.parametrize("projected", [False, True], ids=["one panel", "two panels"])
def test_the_legend_lies_inside_the_figure(projected: bool):
    """Long labels (references, "measured (filled marker, …)") in three columns overflowed a
    one-panel figure and were cut at both edges."""
    rows = measured_rows() + (projected_rows() if projected else [])
    figure = build_plan_figure(pd.DataFrame(rows), REFERENCES)
    figure.canvas.draw()
    (legend,) = figure.legends
    box = legend.get_window_extent()
    assert box.x0 >= 0 and box.x1 <= figure.bbox.width and box.y0 >= 0, (box, figure.bbox)
    assert len(legend.get_texts()) >= 5
