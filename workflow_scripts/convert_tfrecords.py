"""Rule convert_tfrecords: write one shard and its manifest."""

from pathlib import Path

from distmis.workflow import start_script

start_script(snakemake)  # noqa: F821 - injected by Snakemake

from distmis.data.convert import convert_shard, find_shard, tune_allocator  # noqa: E402
from distmis.fileio import read_json, write_json  # noqa: E402

tune_allocator()  # this job's process only converts; see the function's docstring
plan = read_json(snakemake.input.plan, "rule plan_tfrecords")  # noqa: F821
shard_path = Path(snakemake.output.shard)  # noqa: F821
split, index = find_shard(plan, shard_path.name)
write_json(snakemake.output.manifest, convert_shard(plan, split, index, shard_path))  # noqa: F821
