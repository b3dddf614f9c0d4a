"""Rule download_brats: fetch, verify and safely extract the MSD archive.

The logic is :func:`distmis.workflow.download_brats`; Snakemake injects ``snakemake``."""

from distmis.workflow import download_brats

download_brats(snakemake)  # noqa: F821
