"""Rule train_data_parallel: the whole grid in data-parallel mode with {backend} on {gpus} GPUs.

The logic is :func:`distmis.workflow.train_data_parallel`; Snakemake injects ``snakemake``."""

from distmis.workflow import train_data_parallel

train_data_parallel(snakemake)  # noqa: F821
