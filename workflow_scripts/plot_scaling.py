"""Rule plot_scaling: speedup, efficiency, makespan and per-run timeline figures (PNG + PDF)."""

from distmis.workflow import start_script

start_script(snakemake)  # noqa: F821 - injected by Snakemake

from distmis.analysis.workflow import plot_scaling_from_rule  # noqa: E402

plot_scaling_from_rule(snakemake)  # noqa: F821
