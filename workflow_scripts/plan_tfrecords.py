"""Rule plan_tfrecords: list, validate and split the cases; assign them to shards."""

from pathlib import Path

from distmis.workflow import start_script

start_script(snakemake)  # noqa: F821 - injected by Snakemake

from distmis.data.convert import ConvertParams, plan_conversion  # noqa: E402
from distmis.fileio import write_json  # noqa: E402

params = ConvertParams.from_config(snakemake.params.preprocess)  # noqa: F821
write_json(snakemake.output.plan, plan_conversion(Path(snakemake.input.task), params))  # noqa: F821
