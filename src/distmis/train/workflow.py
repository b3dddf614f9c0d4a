"""What the two training rules' scripts share: settings from the rule, then one run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distmis.train.run import run_training
from distmis.train.settings import TrainSettings


def train_from_rule(snakemake: Any, mode: str) -> dict:
    """Run ``mode`` for the rule's ``{gpus}`` wildcard with the validated ``train`` config."""
    settings = TrainSettings.from_config(
        snakemake.params.train,
        mode=mode,
        gpus=int(snakemake.wildcards.gpus),
        tfrecord_dir=Path(snakemake.input.info).parent,
        out_dir=Path(snakemake.params.out),
    )
    return run_training(settings)
