"""Rule index_tfrecords: merge the shard manifests into info.json."""

from pathlib import Path

from distmis.workflow import start_script

start_script(snakemake)  # noqa: F821 - injected by Snakemake

from distmis.data.convert import write_info  # noqa: E402
from distmis.fileio import read_json  # noqa: E402

plan = read_json(snakemake.input.plan, "rule plan_tfrecords")  # noqa: F821
manifests = [read_json(p, "rule convert_tfrecords") for p in snakemake.input.manifests]  # noqa: F821
write_info(plan, manifests, Path(snakemake.output.info))  # noqa: F821
