"""run_scaling: scaling.csv and every figure from a results folder, in one call."""

from __future__ import annotations

from pathlib import Path

from distmis.scaling.run import run_scaling
from tests.scaling.helpers import REFERENCES, assert_figure, make_results, timeline_names


def test_run_scaling_writes_table_and_every_figure(tmp_path: Path):
    results = make_results(tmp_path / "train")
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
