"""Rule evaluate: one (backend, mode)'s best model on the test split; predictions, overlays.

The logic is :func:`distmis.workflow.evaluate`; Snakemake injects ``snakemake``."""

from distmis.workflow import evaluate

evaluate(snakemake)  # noqa: F821
