"""Scaling figures: every figure is written as a readable PNG and a PDF; rule glue; references."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import matplotlib.image as mpimg
import pandas as pd
import pytest

from distmis.analysis.figures import (
    Reference,
    parse_references,
    plot_efficiency,
    plot_makespan,
    plot_speedup,
    plot_timeline,
    timeline_stem,
)
from distmis.analysis.run import run_scaling
from distmis.analysis.scaling import scaling_table
from distmis.analysis.timings import Run, load_runs
from distmis.analysis.workflow import plot_scaling_from_rule, scaling_from_rule
from distmis.errors import ConfigError
from tests.test_scaling import START, eval_summary, trial_row, write_run

REFERENCES = [
    {
        "label": "original DistMIS, experiment parallelism",
        "mode": "experiment",
        "gpus": 32,
        "speedup": 12,
    },
    {"label": "original DistMIS, data parallelism", "mode": "data", "gpus": 32, "speedup": 14},
]


BACKENDS = ("tensorflow", "torch")
MODES = ("data", "experiment")


def make_results(root: Path) -> Path:
    """Both backends and modes at G = 1, 2, 4 with failed trials and resumed runs among them."""
    for backend, scale in zip(BACKENDS, (1.0, 0.7), strict=True):
        for gpus, makespan in ((1, 100.0), (2, 60.0), (4, 40.0)):
            rows = [
                trial_row(f"t{i}", START + 2 + 5 * i, START + 2 + 5 * i + 4, workers=gpus)
                for i in range(3)
            ]
            write_run(
                root, "data", gpus, makespan * scale, rows, resumed=gpus == 4, backend=backend
            )
        for gpus, makespan in ((1, 90.0), (2, 50.0), (4, 30.0)):
            rows = [trial_row(f"t{i}", START + 1 + i, START + 20 + i) for i in range(gpus + 1)]
            rows.append(trial_row("bad", START + 3, START + 4, status="failed"))
            write_run(root, "experiment", gpus, makespan, rows, backend=backend)
    return root


def timeline_names(gpu_counts) -> set[str]:
    return {
        f"timeline_{backend}_{mode}_{gpus}gpu"
        for backend in BACKENDS
        for mode in MODES
        for gpus in gpu_counts
    }


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
    run = Run.from_dir(results / "torch" / "experiment" / "4gpu")
    assert timeline_stem(run) == "timeline_torch_experiment_4gpu"
    stem = tmp_path / "fig" / timeline_stem(run)
    assert_figure(stem, plot_timeline(run, stem))


def test_run_scaling_writes_table_and_every_figure(results: Path, tmp_path: Path):
    out = tmp_path / "scaling"
    written = run_scaling(results, out, REFERENCES)
    assert written["scaling_csv"] == out / "scaling.csv"
    names = {"speedup", "efficiency", "makespan"} | timeline_names((1, 2, 4))
    assert set(written) == names | {"scaling_csv"}
    for name in names:
        assert_figure(out / name, written[name])
    # Nothing else (no temp files) is left in the folder.
    expected = {"scaling.csv"} | {f"{n}{s}" for n in names for s in (".png", ".pdf")}
    assert {p.name for p in out.iterdir()} == expected


def test_scaling_command_reads_the_results_folder(results: Path, tmp_path: Path):
    out = tmp_path / "scaling"
    command = [sys.executable, "-m", "distmis.cli", "scaling", "--results", str(results)]
    result = subprocess.run(
        [*command, "--out", str(out)], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    written = json.loads(result.stdout.splitlines()[-1])
    figures = {"speedup", "efficiency", "makespan"} | timeline_names((1, 2, 4))
    assert set(written) == figures | {"scaling_csv"}
    table = (out / "scaling.csv").read_text().splitlines()
    assert len(table) == 1 + len(BACKENDS) * len(MODES) * 3


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
        str(results / backend / mode / f"{gpus}gpu" / "summary.json")
        for backend in BACKENDS
        for mode in MODES
        for gpus in (1, 2)  # the config asks for fewer runs than exist: only these count
    ]
    table = tmp_path / "results" / "scaling" / "scaling.csv"
    evals = [
        eval_summary(
            tmp_path / "results" / "eval" / backend / "data" / "summary.json",
            str(results / backend / "data" / "2gpu" / "best_model.json"),
            [dice],
        )
        for backend, dice in zip(BACKENDS, (0.6, 0.8), strict=True)
    ]
    scaling_from_rule(
        SimpleNamespace(
            input=Namedlist(summaries=summaries, evals=[str(p) for p in evals]),
            output=Namedlist(table=str(table)),
        )
    )
    rows = pd.read_csv(table).set_index(["backend", "mode", "gpus"])["test_dice"]
    assert rows.dropna().to_dict() == {("tensorflow", "data", 2): 0.6, ("torch", "data", 2): 0.8}
    figures = tmp_path / "results" / "plot_scaling"
    runs = sorted(timeline_names((1, 2)))
    # Named as rules/report.smk names them: PNGs by figure name, PDFs beside them.
    outputs: dict[str, object] = {}
    for name in ("speedup", "efficiency", "makespan"):
        outputs[name] = str(figures / f"{name}.png")
        outputs[f"{name}_pdf"] = str(figures / f"{name}.pdf")
    outputs["timelines"] = [str(figures / f"{r}.png") for r in runs]
    outputs["timelines_pdf"] = [str(figures / f"{r}.pdf") for r in runs]
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
