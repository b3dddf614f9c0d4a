"""Rule train_experiment_parallel: the whole grid, experiment-parallel, {backend} on {gpus} GPUs.

The logic is :func:`distmis.workflow.train_experiment_parallel`; Snakemake injects ``snakemake``."""

from distmis.workflow import train_experiment_parallel

train_experiment_parallel(snakemake)  # noqa: F821
