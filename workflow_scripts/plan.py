"""Rule plan: calibrations, plan.csv and plan.png from the measured runs.

The logic is :func:`distmis.workflow.plan`; Snakemake injects ``snakemake``."""

from distmis.workflow import plan

plan(snakemake)  # noqa: F821
