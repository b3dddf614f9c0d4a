"""Rule scaling: scaling.csv (speedup, efficiency, throughput, Dice) from every run's timings.

The logic is :func:`distmis.workflow.scaling`; Snakemake injects ``snakemake``."""

from distmis.workflow import scaling

scaling(snakemake)  # noqa: F821
