"""Rule convert_tfrecords: write one shard and its manifest.

The logic is :func:`distmis.workflow.convert_tfrecords`; Snakemake injects ``snakemake``."""

from distmis.workflow import convert_tfrecords

convert_tfrecords(snakemake)  # noqa: F821
