"""Starting or joining Ray with exactly the resources a training job was given."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

log = logging.getLogger(__name__)

# Ray starts workers at nice 15; a timed trial must not yield its cores to other work.
WORKER_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "RAY_worker_niceness": "0"}


def start_ray(
    address: str | None, backend_env: Mapping[str, str], num_cpus: int, num_gpus: int
) -> dict[str, float]:
    """Join the cluster at ``address``, or start a local Ray limited to the job's share.

    Workers get :data:`WORKER_ENV` and ``backend_env`` (the backend's ``worker_env``).

    The dashboard stays off: its job API runs code for anyone who can reach its port.
    Returns the cluster's total resources, recorded in summary.json.
    """
    import ray

    # Inside `distmis ray-cluster` (SLURM jobs) the launcher exports the cluster's address.
    address = address or os.environ.get("RAY_ADDRESS")
    runtime_env = {
        "env_vars": {**WORKER_ENV, **backend_env, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    }
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        ray.init(
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            include_dashboard=False,
            runtime_env=runtime_env,
            log_to_driver=True,
        )
    resources = dict(ray.cluster_resources())
    log.info("ray resources: %s", resources)
    return resources


SLURM_VARIABLES = (
    "SLURM_JOB_ID",
    "SLURM_JOB_NUM_NODES",
    "SLURM_JOB_NODELIST",
    "SLURM_CPUS_ON_NODE",
    "SLURM_GPUS_ON_NODE",
    "SLURM_JOB_GPUS",
    "SLURM_GPUS",
    "SLURM_JOB_PARTITION",
)


def scheduler_allocation() -> dict[str, str]:
    """What SLURM gave this job (empty outside SLURM), recorded in summary.json."""
    return {name: os.environ[name] for name in SLURM_VARIABLES if name in os.environ}


def stop_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
