"""Rule plan_tfrecords: list, validate and split the cases; assign them to shards.

The logic is :func:`distmis.workflow.plan_tfrecords`; Snakemake injects ``snakemake``."""

from distmis.workflow import plan_tfrecords

plan_tfrecords(snakemake)  # noqa: F821
