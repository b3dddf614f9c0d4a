"""Rule index_tfrecords: merge the shard manifests into info.json.

The logic is :func:`distmis.workflow.index_tfrecords`; Snakemake injects ``snakemake``."""

from distmis.workflow import index_tfrecords

index_tfrecords(snakemake)  # noqa: F821
