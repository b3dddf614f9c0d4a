"""Rule train_data_parallel: the whole grid in data-parallel mode with {backend} on {gpus} GPUs."""

from distmis.workflow import start_script

start_script(snakemake)  # noqa: F821 - injected by Snakemake

from distmis.train.workflow import train_from_rule  # noqa: E402

train_from_rule(snakemake, "data")  # noqa: F821
