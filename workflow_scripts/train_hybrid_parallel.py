"""Rule train_hybrid_parallel: the whole grid in hybrid mode, k GPUs per trial and G/k trials at
once, with {backend} on {gpus} GPUs.

The logic is :func:`distmis.workflow.train`, for every training rule; Snakemake injects ``snakemake``."""

from distmis.workflow import train

train(snakemake)  # noqa: F821
