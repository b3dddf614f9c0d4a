"""Rule plot_scaling: speedup, efficiency, makespan and per-run timeline figures (PNG + PDF).

The logic is :func:`distmis.workflow.plot_scaling`; Snakemake injects ``snakemake``."""

from distmis.workflow import plot_scaling

plot_scaling(snakemake)  # noqa: F821
