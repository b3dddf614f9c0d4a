"""Rule preflight: can {backend} train on the GPUs a training job's node holds?

The logic is :func:`distmis.workflow.preflight`; Snakemake injects ``snakemake``."""

from distmis.workflow import preflight

preflight(snakemake)  # noqa: F821
