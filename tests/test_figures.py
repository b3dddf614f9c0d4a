"""Scaling figures: every figure is written as a readable PNG and a PDF; rule glue; references."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import matplotlib.image as mpimg
import pytest

from distmis.analysis.figures import (
    Reference,
    parse_references,
    plot_efficiency,
    plot_makespan,
    plot_speedup,
    plot_timeline,
)
from distmis.analysis.run import run_scaling
from distmis.analysis.scaling import scaling_table
from distmis.analysis.timings import Run, load_runs
from distmis.analysis.workflow import plot_scaling_from_rule, scaling_from_rule
from distmis.errors import ConfigError
from tests.test_scaling import START, trial_row, write_run

REFERENCES = [
    {
        "label": "original DistMIS, experiment parallelism",
        "mode": "experiment",
        "gpus": 32,
        "speedup": 12,
    },
    {"label": "original DistMIS, data parallelism", "mode": "data", "gpus": 32, "speedup": 14},
]


def make_results(root: Path) -> Path:
    """Both modes at G = 1, 2, 4 with a failed trial and a resumed run among them."""
    for gpus, makespan in ((1, 100.0), (2, 60.0), (4, 40.0)):
        rows = [
            trial_row(f"t{i}", START + 2 + 5 * i, START + 2 + 5 * i + 4, workers=gpus)
            for i in range(3)
        ]
        write_run(root, "data", gpus, makespan, rows, resumed=gpus == 4)
    for gpus, makespan in ((1, 90.0), (2, 50.0), (4, 30.0)):
        rows = [trial_row(f"t{i}", START + 1 + i, START + 20 + i) for i in range(gpus + 1)]
        rows.append(trial_row("bad", START + 3, START + 4, status="failed"))
        write_run(root, "experiment", gpus, makespan, rows)
    return root


def assert_figure(stem: Path, paths: list[Path]) -> None:
    assert paths == [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for path in paths:
        assert path.stat().st_size > 0
    image = mpimg.imread(paths[0])
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert paths[1].read_bytes().startswith(b"%PDF")


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
    run = Run.from_dir(results / "experiment" / "4gpu")
    stem = tmp_path / "fig" / "timeline_experiment_4gpu"
    assert_figure(stem, plot_timeline(run, stem))


def test_run_scaling_writes_table_and_every_figure(results: Path, tmp_path: Path):
    out = tmp_path / "scaling"
    written = run_scaling(results, out, REFERENCES)
    assert written["scaling_csv"] == out / "scaling.csv"
    names = {"speedup", "efficiency", "makespan"} | {
        f"timeline_{mode}_{gpus}gpu" for mode in ("data", "experiment") for gpus in (1, 2, 4)
    }
    assert set(written) == names | {"scaling_csv"}
    for name in names:
        assert_figure(out / name, written[name])
    # Nothing else (no temp files) is left in the folder.
    expected = {"scaling.csv"} | {f"{n}{s}" for n in names for s in (".png", ".pdf")}
    assert {p.name for p in out.iterdir()} == expected


def test_references_are_checked():
    assert parse_references(None) == []
    assert parse_references(REFERENCES)[1] == Reference(
        "original DistMIS, data parallelism", "data", 32, 14.0
    )
    with pytest.raises(ConfigError, match=r"report\.references\[0\] needs label"):
        parse_references([{"mode": "data", "gpus": 32, "speedup": 14}])
    with pytest.raises(ConfigError, match=r"report\.references\[0\]: gpus must be >= 1"):
        parse_references([{"label": "x", "mode": "data", "gpus": 0, "speedup": 14}])


class Namedlist(list):
    """Stand-in for Snakemake's input/output objects: a list whose entries have names."""

    def __init__(self, **named: object) -> None:
        flat: list = []
        for value in named.values():
            flat.extend(value if isinstance(value, list) else [value])
        super().__init__(flat)
        self.__dict__.update(named)


def test_rule_scripts_write_declared_outputs(results: Path, tmp_path: Path):
    summaries = [
        str(results / mode / f"{gpus}gpu" / "summary.json")
        for mode in ("data", "experiment")
        for gpus in (1, 2)  # the config asks for fewer runs than exist: only these count
    ]
    table = tmp_path / "results" / "scaling" / "scaling.csv"
    scaling_from_rule(
        SimpleNamespace(
            input=Namedlist(summaries=summaries, evals=[]), output=Namedlist(table=str(table))
        )
    )
    figures = tmp_path / "results" / "plot_scaling"
    runs = [f"{m}_{g}gpu" for m in ("data", "experiment") for g in (1, 2)]
    # Named as rules/report.smk names them: PNGs by figure name, PDFs beside them.
    outputs: dict[str, object] = {}
    for name in ("speedup", "efficiency", "makespan"):
        outputs[name] = str(figures / f"{name}.png")
        outputs[f"{name}_pdf"] = str(figures / f"{name}.pdf")
    outputs["timelines"] = [str(figures / f"timeline_{r}.png") for r in runs]
    outputs["timelines_pdf"] = [str(figures / f"timeline_{r}.pdf") for r in runs]
    rule = SimpleNamespace(
        input=Namedlist(table=str(table), summaries=summaries),
        output=Namedlist(**outputs),
        params=SimpleNamespace(references=REFERENCES),
    )
    plot_scaling_from_rule(rule)
    assert {p.name for p in figures.iterdir()} == {Path(p).name for p in rule.output}
    # A run the rule does not declare a timeline for is refused before anything is drawn.
    outputs["timelines"] = outputs["timelines"][1:]
    rule.output = Namedlist(**outputs)
    with pytest.raises(ValueError, match="undeclared outputs"):
        plot_scaling_from_rule(rule)
