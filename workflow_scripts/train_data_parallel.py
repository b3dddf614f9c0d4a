"""Rule train_data_parallel: the whole grid in data-parallel mode with {backend} on {gpus} GPUs.

The logic is :func:`distmis.workflow.train`, for every training rule; Snakemake injects ``snakemake``."""

from distmis.workflow import train

train(snakemake)  # noqa: F821
