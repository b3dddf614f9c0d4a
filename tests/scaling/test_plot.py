"""Scaling figures: every figure is written as a readable PNG and a PDF; references checked."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest

from distmis.errors import ConfigError
from distmis.scaling.plot import (
    Reference,
    efficiency_figure,
    makespan_figure,
    parse_references,
    plot_all,
    plot_efficiency,
    plot_makespan,
    plot_speedup,
    plot_time_to_target,
    plot_timeline,
    speedup_figure,
    time_to_target_figure,
    timeline_stem,
    timeline_stems,
)
from distmis.scaling.quality import QualityTarget, quality_curve
from distmis.scaling.quality_plot import plot_quality, quality_figure
from distmis.scaling.style import MODE_COLOURS, mode_colour, mode_name, series_styles
from distmis.scaling.table import scaling_table
from distmis.scaling.timings import Run, load_runs
from tests.scaling.helpers import (
    GRID,
    RANDOM,
    REFERENCES,
    START,
    assert_figure,
    make_results,
    trial_row,
    write_epochs,
    write_run,
    write_search_runs,
)


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return make_results(tmp_path / "train", hybrid=True)


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


def test_hybrid_timeline_figure(results: Path, tmp_path: Path):
    run = Run.from_dir(results / "tensorflow" / "hybrid2" / "4gpu")  # with a stopped trial
    assert timeline_stem(run) == "timeline_tensorflow_hybrid2_4gpu"
    stem = tmp_path / "fig" / timeline_stem(run)
    assert_figure(stem, plot_timeline(run, stem))


def test_each_mode_label_has_its_own_colour():
    assert (mode_colour("data"), mode_colour("experiment")) == ("tab:blue", "tab:orange")
    labels = ["data", "experiment", "hybrid2", "hybrid4", "hybrid8", "hybrid16", "hybrid3"]
    assert len({mode_colour(label) for label in labels}) == len(labels)
    assert "tab:red" not in {mode_colour(label) for label in labels}  # failed trials' colour
    assert set(MODE_COLOURS) == {"data", "experiment"}
    assert mode_name("hybrid4") == "hybrid parallelism (4 GPUs per trial)"
    assert mode_name("data") == "data parallelism"


def test_quality_figure_is_written(results: Path, tmp_path: Path):
    stem = tmp_path / "fig" / "quality"
    assert_figure(stem, plot_quality(load_runs(results), stem, quality_tolerance=0.02))


def test_quality_figure_draws_each_run_curve_and_its_time_to_best(tmp_path: Path):
    for gpus, scale in ((1, 1.0), (2, 0.5)):
        rows = [trial_row("a", START, START + 35 * scale)]
        run = write_run(tmp_path, "experiment", gpus, 40.0 * scale, rows)
        points = [(1, 10.0 * scale, 0.5), (2, 20.0 * scale, 0.79), (3, 30.0 * scale, 0.8)]
        write_epochs(run, "a", points)
    run = write_run(
        tmp_path,
        "hybrid",
        2,
        30.0,
        [trial_row("h", START, START + 25, workers=2)],
        gpus_per_trial=2,
    )
    write_epochs(run, "h", [(1, 5.0, 0.6), (2, 25.0, 0.7)])
    curves = [quality_curve(r, 0.01) for r in load_runs(tmp_path)]
    figure = quality_figure(curves)
    one, two = figure.axes[:2]
    assert [ax.get_title() for ax in (one, two)] == ["G = 1 GPU", "G = 2 GPUs"]
    # Panel G = 1: the step curve held at the final best to the makespan, its end, the marker.
    step, end, marker = one.lines
    assert step.get_xydata().tolist() == [[10.0, 0.5], [20.0, 0.79], [30.0, 0.8], [40.0, 0.8]]
    assert step.get_drawstyle() == "steps-post"
    assert end.get_xydata().tolist() == [[40.0, 0.8]]
    assert marker.get_xydata().tolist() == [[20.0, 0.79]]  # within 0.01 of 0.8 at 20 s
    assert step.get_color() == "tab:orange"
    # Panel G = 2: experiment (halved times) and hybrid2, each its own colour.
    steps = two.lines[::3]
    assert [line.get_color() for line in steps] == ["tab:orange", "tab:green"]
    assert [line.get_xydata()[-1].tolist() for line in steps] == [[20.0, 0.8], [30.0, 0.7]]
    assert [line.get_xydata().tolist() for line in two.lines[2::3]] == [
        [[10.0, 0.79]],
        [[25.0, 0.7]],
    ]
    labels = [t.get_text() for t in figure.legends[0].get_texts()]
    assert labels[:2] == ["experiment parallelism", "hybrid parallelism (2 GPUs per trial)"]
    assert "first within 0.01 Dice of the run's final best" in labels[2]


def test_quality_figure_without_any_validation(tmp_path: Path):
    rows = [trial_row("a", START, START + 1, status="failed")]
    write_run(tmp_path / "train", "data", 1, 5.0, rows, best_val_dice=None)
    stem = tmp_path / "fig" / "quality"
    assert_figure(stem, plot_quality(load_runs(tmp_path / "train"), stem))


def test_time_to_target_figure_lists_every_series_even_one_that_never_reached_it(
    tmp_path: Path,
):
    # The study's best is 0.8 (experiment at G = 1), so the default target is 0.76.
    for mode, gpus, points in (
        ("experiment", 1, [(1, 10.0, 0.5), (2, 20.0, 0.79), (3, 30.0, 0.8)]),
        ("experiment", 2, [(1, 8.0, 0.77)]),
        ("experiment", 4, [(1, 8.0, 0.7)]),  # below 0.76: no point
        ("data", 1, [(1, 10.0, 0.6), (2, 25.0, 0.74)]),  # never reaches it
        ("data", 2, [(1, 12.0, 0.7)]),
    ):
        write_epochs(write_run(tmp_path / "train", mode, gpus, 40.0), "t1", points)
    table = scaling_table(load_runs(tmp_path / "train"))
    stem = tmp_path / "fig" / "time_to_target"
    assert_figure(stem, plot_time_to_target(table, stem))
    figure = time_to_target_figure(table)
    ax = figure.axes[0]
    assert ax.get_title() == "Time to a common quality target: best validation Dice so far ≥ 0.76"
    data, experiment = ax.lines[:2]  # one line per series, sorted by (backend, mode)
    assert data.get_color() == "tab:blue" and experiment.get_color() == "tab:orange"
    assert data.get_xydata()[:, 0].tolist() == [1.0, 2.0]
    assert all(map(math.isnan, data.get_xydata()[:, 1]))  # never reached: nothing drawn
    assert experiment.get_xydata()[:2].tolist() == [[1.0, 20.0], [2.0, 8.0]]
    assert math.isnan(experiment.get_xydata()[2, 1])  # G = 4 never reached it
    labels = [t.get_text() for t in figure.legends[0].get_texts()]
    assert labels == [
        "data parallelism: never reached the target",
        "experiment parallelism: not reached at G = 4",
    ]


def test_time_to_target_figure_with_an_absolute_target_no_run_reached(tmp_path: Path):
    write_epochs(write_run(tmp_path / "train", "data", 1, 40.0), "t1", [(1, 10.0, 0.6)])
    table = scaling_table(load_runs(tmp_path / "train"), quality_target=QualityTarget(dice=0.9))
    stem = tmp_path / "fig" / "time_to_target"
    assert_figure(stem, plot_time_to_target(table, stem))
    figure = time_to_target_figure(table)
    assert figure.axes[0].get_title().endswith("best validation Dice so far ≥ 0.9")
    labels = [t.get_text() for t in figure.legends[0].get_texts()]
    assert labels == ["data parallelism: never reached the target"]


def test_time_to_target_figure_without_a_target(tmp_path: Path):
    write_run(tmp_path / "train", "data", 1, 40.0)  # no validation anywhere: no study best
    figure = time_to_target_figure(scaling_table(load_runs(tmp_path / "train")))
    assert figure.axes[0].get_title().startswith("Time to target: no target")
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["data parallelism"]


# --- searches: one series per (backend, mode, search), each under its own label -------------


def _legend_labels(figure) -> list[str]:
    legends = [*figure.legends, *(ax.get_legend() for ax in figure.axes if ax.get_legend())]
    return [text.get_text() for legend in legends for text in legend.get_texts()]


@pytest.fixture
def two_searches(tmp_path: Path) -> list[Run]:
    """Data parallelism at G = 1, 2 with the grid and with random search of 8, each with a
    validation; the study's best is 0.8, so its target 0.76."""
    directories = write_search_runs(
        tmp_path / "train",
        [
            (GRID, "data", 1, 100.0),
            (GRID, "data", 2, 60.0),
            (RANDOM, "data", 1, 40.0),
            (RANDOM, "data", 2, 25.0),
        ],
    )
    for directory, points in zip(
        directories,
        ([(1, 30.0, 0.8)], [(1, 20.0, 0.8)], [(1, 35.0, 0.78)], [(1, 12.0, 0.5)]),
        strict=True,
    ):
        write_epochs(directory, "t1", points)
    return load_runs(directories=directories)


GRID_LABEL = "data parallelism (grid search)"
RANDOM_LABEL = "data parallelism (random×8 search)"


def test_every_figure_draws_both_searches_under_their_own_labels(
    two_searches: list[Run], tmp_path: Path
):
    table = scaling_table(two_searches)
    speedup = speedup_figure(table)
    grid, random = speedup.axes[0].lines[:2]
    assert grid.get_xydata().tolist() == [[1.0, 1.0], [2.0, pytest.approx(5 / 3)]]
    assert random.get_xydata().tolist() == [[1.0, 1.0], [2.0, pytest.approx(1.6)]]
    # Same mode and backend: colour and line alike, the marker's fill tells them apart.
    assert grid.get_color() == random.get_color() == "tab:blue"
    assert (grid.get_fillstyle(), random.get_fillstyle()) == ("full", "none")
    assert _legend_labels(speedup) == [GRID_LABEL, RANDOM_LABEL, "ideal (linear)"]
    efficiency = efficiency_figure(table)
    assert _legend_labels(efficiency) == [GRID_LABEL, RANDOM_LABEL, "ideal (linear scaling)"]
    makespan = makespan_figure(table)
    assert _legend_labels(makespan) == [GRID_LABEL, RANDOM_LABEL]
    heights = [[bar.get_height() for bar in c] for c in makespan.axes[0].containers]
    assert heights == [[100.0, 60.0], [40.0, 25.0]]
    hatches = [{bar.get_hatch() for bar in c} for c in makespan.axes[0].containers]
    assert hatches == [{None}, {".."}]
    target = time_to_target_figure(table)
    assert [line.get_xydata()[:, 1].tolist()[0] for line in target.axes[0].lines[:2]] == [
        30.0,
        35.0,
    ]
    assert _legend_labels(target) == [GRID_LABEL, f"{RANDOM_LABEL}: not reached at G = 2"]
    quality = quality_figure([quality_curve(run, 0.01) for run in two_searches])
    assert _legend_labels(quality)[:2] == [GRID_LABEL, RANDOM_LABEL]
    # Panel G = 1: one step curve per search, each with its time-to-best marker.
    steps = quality.axes[0].lines[::3]
    assert [line.get_xydata()[-1].tolist() for line in steps] == [[100.0, 0.8], [40.0, 0.78]]
    written = plot_all(table, two_searches, tmp_path / "fig")
    assert sorted(name for name in written if name.startswith("timeline")) == [
        "timeline_tensorflow_data_1gpu_grid",
        "timeline_tensorflow_data_1gpu_randomx8",
        "timeline_tensorflow_data_2gpu_grid",
        "timeline_tensorflow_data_2gpu_randomx8",
    ]


def test_a_grid_only_study_labels_its_series_as_before(results: Path):
    # The labels these figures had before series had a search (checked against that code),
    # but for the hybrid runs' early stopping, which a series now says (and only where on).
    runs = load_runs(results)
    table = scaling_table(runs)
    labels = [
        f"{mode} ({backend}{', ASHA' if 'hybrid' in mode else ''})"
        for backend in ("tensorflow", "torch")
        for mode in (
            "data parallelism",
            "experiment parallelism",
            "hybrid parallelism (2 GPUs per trial)",
        )
    ]
    vs_2 = [f"{label}, vs 2 GPUs" if "hybrid" in label else label for label in labels]
    assert _legend_labels(speedup_figure(table)) == [
        *vs_2,
        "ideal (linear)",
        "ideal from 2 GPUs",
        "resumed run (makespan spans the interruption)",
    ]
    assert _legend_labels(makespan_figure(table)) == [*labels, "resumed run"]
    assert _legend_labels(quality_figure([quality_curve(r) for r in runs]))[:-2] == labels
    assert "timeline_torch_experiment_4gpu" in timeline_stems(runs)
    # The markers stay filled, but for the ASHA runs' (another search of the study).
    fills = {line.get_label(): line.get_fillstyle() for line in speedup_figure(table).axes[0].lines}
    assert {fill for label, fill in fills.items() if label in labels} == {"full"}
    assert {fill for label, fill in fills.items() if "ASHA" in label} == {"none"}


def test_no_two_series_ever_share_a_label():
    # Every study of up to three of these series: a label names each series apart.
    pool = list(
        itertools.product(
            ("tensorflow", "torch"),
            ("data", "hybrid2"),
            ("grid", "random×8", "tpe×8"),
            ("none", "asha"),
        )
    )
    for size in (1, 2, 3):
        for keys in itertools.combinations(pool, size):
            labels = [style.label for style in series_styles(keys).values()]
            assert len(set(labels)) == size, keys
    styles = series_styles(pool)
    assert styles[("tensorflow", "data", "grid", "none")].label == (
        "data parallelism (tensorflow, grid search)"
    )
    assert styles[("tensorflow", "data", "grid", "asha")].label == (
        "data parallelism (tensorflow, grid search, ASHA)"
    )
    # A study of one non-default value still says it, as a torch-only study says torch.
    (only,) = series_styles([("tensorflow", "data", "random×8", "none")]).values()
    assert only.label == "data parallelism (random×8 search)"


def test_runs_of_one_search_with_and_without_asha_get_a_timeline_each(tmp_path: Path):
    # The search study: grid with and without ASHA at the same (backend, mode, G), and a run
    # no other shares its name with, which keeps the workflow's name.
    without = write_run(tmp_path / "grid_none", "data", 2, 60.0)
    with_asha = write_run(tmp_path / "grid_asha", "data", 2, 40.0, scheduler="asha")
    alone = write_run(tmp_path / "grid_none", "data", 1, 90.0)
    runs = load_runs(directories=[without, with_asha, alone])
    stems = dict(zip((r.directory for r in runs), timeline_stems(runs), strict=True))
    assert stems == {
        alone: "timeline_tensorflow_data_1gpu",
        without: "timeline_tensorflow_data_2gpu_grid",
        with_asha: "timeline_tensorflow_data_2gpu_grid_asha",
    }
