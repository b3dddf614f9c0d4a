"""Rule scaling: scaling.csv (speedup, efficiency, throughput, Dice) from every run's timings."""

from distmis.workflow import start_script

start_script(snakemake)  # noqa: F821 - injected by Snakemake

from distmis.analysis.workflow import scaling_from_rule  # noqa: E402

scaling_from_rule(snakemake)  # noqa: F821
