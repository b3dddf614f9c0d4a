"""run_scaling: scaling.csv and every figure from a results folder, in one call."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from distmis.scaling.run import run_scaling
from distmis.scaling.table import scaling_table
from distmis.scaling.timings import load_runs
from tests.scaling.helpers import REFERENCES, assert_figure, make_results, timeline_names


def test_run_scaling_writes_table_and_every_figure(tmp_path: Path):
    results = make_results(tmp_path / "train")
    out = tmp_path / "scaling"
    written = run_scaling(results, out, REFERENCES)
    assert written["scaling_csv"] == out / "scaling.csv"
    names = {"speedup", "efficiency", "makespan", "quality", "time_to_target"}
    names |= timeline_names((1, 2, 4))
    assert set(written) == names | {"scaling_csv"}
    for name in names:
        assert_figure(out / name, written[name])
    # Nothing else (no temp files) is left in the folder.
    expected = {"scaling.csv"} | {f"{n}{s}" for n in names for s in (".png", ".pdf")}
    assert {p.name for p in out.iterdir()} == expected


def test_run_scaling_with_hybrid_runs_and_a_tolerance(tmp_path: Path):
    results = make_results(tmp_path / "train", hybrid=True)
    out = tmp_path / "scaling"
    written = run_scaling(
        results, out, REFERENCES, quality_tolerance=0.1, quality_target={"dice": 0.72}
    )
    figures = {"speedup", "efficiency", "makespan", "quality", "time_to_target"}
    assert set(written) == figures | {"scaling_csv"} | timeline_names((1, 2, 4), hybrid=True)
    table = pd.read_csv(out / "scaling.csv").set_index(["backend", "mode", "gpus"])
    hybrid = table.loc[("torch", "hybrid2", 4)]
    assert (hybrid["gpus_per_trial"], hybrid["trials_stopped"]) == (2, 1)
    assert (hybrid["scheduler"], hybrid["startup_seconds"]) == ("asha", 1.5)
    # Epochs at 20/3 s (0.4), 10 s (0.7), 19 s (0.75): 0.7 is within 0.1 of 0.75.
    assert hybrid["time_to_best_seconds"] == pytest.approx(10.0)
    # The target reaches the table too: 0.72 is first reached by 0.75, at 19 s.
    assert hybrid["quality_target_dice"] == 0.72
    assert hybrid["time_to_target_seconds"] == pytest.approx(19.0)
    # The tolerance reaches the table: with none, only the final best (at 19 s) counts.
    strict = scaling_table(load_runs(results), quality_tolerance=0.0)
    strict = strict.set_index(["backend", "mode", "gpus"])
    assert strict.loc[("torch", "hybrid2", 4), "time_to_best_seconds"] == pytest.approx(19.0)
