"""Rule synthesize_brats: an offline BraTS-like dataset in MSD layout.

The logic is :func:`distmis.workflow.synthesize_brats`; Snakemake injects ``snakemake``."""

from distmis.workflow import synthesize_brats

synthesize_brats(snakemake)  # noqa: F821
