"""What the report rules' scripts call: the analysis API fed from the rule's input/output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distmis.analysis.figures import parse_references, plot_all, timeline_stem
from distmis.analysis.scaling import (
    attach_test_dice,
    read_scaling_csv,
    scaling_table,
    write_scaling_csv,
)
from distmis.analysis.timings import load_runs


def _rule_runs(snakemake: Any) -> list:
    # Exactly the runs the config asks for (the rule's inputs), not whatever is on disk.
    return load_runs(directories=[Path(p).parent for p in snakemake.input.summaries])


def scaling_from_rule(snakemake: Any) -> Path:
    """Rule scaling: the table of the input runs into ``output.table``."""
    table = attach_test_dice(
        scaling_table(_rule_runs(snakemake)), [Path(p) for p in snakemake.input.evals]
    )
    return write_scaling_csv(table, Path(snakemake.output.table))


def plot_scaling_from_rule(snakemake: Any) -> dict[str, list[Path]]:
    """Rule plot_scaling: every figure into the folder of ``output.speedup``.

    The figures come from scaling.csv (so they show what the table says) and the timelines
    from the runs' trials.csv; a figure the rule declares but the data cannot give is an
    error here rather than a confusing missing-output failure later.
    """
    runs = _rule_runs(snakemake)
    table = read_scaling_csv(Path(snakemake.input.table))
    out_dir = Path(snakemake.output.speedup).parent
    declared = {Path(p) for p in snakemake.output}
    expected = {
        out_dir / f"{timeline_stem(run)}{suffix}" for run in runs for suffix in (".png", ".pdf")
    }
    undeclared = expected - declared
    if undeclared:
        raise ValueError(f"plot_scaling would write undeclared outputs: {sorted(undeclared)}")
    references = parse_references(snakemake.params.references)
    return plot_all(table, runs, out_dir, references)
