"""Rule download_brats: fetch, verify and safely extract the MSD archive."""

from pathlib import Path

from distmis.workflow import start_script

start_script(snakemake)  # noqa: F821 - injected by Snakemake

from distmis.data.download import fetch_msd  # noqa: E402

fetch_msd(
    Path(snakemake.output.task).parent,  # noqa: F821
    url=snakemake.params.url,  # noqa: F821
    md5=snakemake.params.md5 or None,  # noqa: F821
    archive=Path(snakemake.params.archive) if snakemake.params.archive else None,  # noqa: F821
    progress=False,
)
