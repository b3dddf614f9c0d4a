"""What the two training rules' scripts share: settings from the rule, then one run.

Outside SLURM the run starts its own local Ray. Inside a SLURM job it runs under
:func:`distmis.cluster.ray_cluster.run_with_ray_cluster`, which starts one Ray cluster
across the job's nodes with ports and an auth token of its own (so jobs sharing a node do
not collide) and stops it whatever happens.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import yaml

from distmis.cluster.ray_cluster import ClusterError, run_with_ray_cluster
from distmis.cluster.resources import job_shape
from distmis.train.run import run_training
from distmis.train.settings import TrainSettings


def train_from_rule(snakemake: Any, mode: str) -> dict | None:
    """Run ``mode`` for the rule's ``{backend}`` and ``{gpus}`` wildcards with the validated
    ``train`` config."""
    train = snakemake.params.train
    gpus = int(snakemake.wildcards.gpus)
    backend = snakemake.wildcards.backend
    out_dir = Path(snakemake.params.out)
    tfrecord_dir = Path(snakemake.input.info).parent
    settings = TrainSettings.from_config(
        train, mode=mode, gpus=gpus, tfrecord_dir=tfrecord_dir, out_dir=out_dir, backend=backend
    )
    if "SLURM_JOB_ID" not in os.environ or settings.ray_address or os.environ.get("RAY_ADDRESS"):
        return run_training(settings)

    out_dir.mkdir(parents=True, exist_ok=True)
    config_path = out_dir / "train_config.yaml"
    config_path.write_text(yaml.safe_dump({"train": dict(train)}))
    shape = job_shape(gpus, train["gpus_per_node"], train["cpus_per_worker"], train["use_gpu"])
    command = [
        sys.executable,
        "-m",
        "distmis.cli",
        "train",
        "--mode",
        mode,
        "--backend",
        backend,
        "--gpus",
        str(gpus),
        "--data",
        str(tfrecord_dir),
        "--out",
        str(out_dir),
        "--config",
        str(config_path),
    ]
    status = run_with_ray_cluster(
        command, cpus_per_node=shape.cpus_per_node, gpus_per_node=shape.gpus_per_node
    )
    if status != 0:
        raise ClusterError(f"training under the job's Ray cluster exited with status {status}")
    return None
