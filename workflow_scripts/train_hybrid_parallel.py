"""Rule train_hybrid_parallel: the whole grid in hybrid mode, k GPUs per trial and G/k trials at
once, with {backend} on {gpus} GPUs.

The logic is :func:`distmis.workflow.train_hybrid_parallel`; Snakemake injects ``snakemake``."""

from distmis.workflow import train_hybrid_parallel

train_hybrid_parallel(snakemake)  # noqa: F821
