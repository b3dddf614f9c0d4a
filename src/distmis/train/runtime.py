"""Starting or joining Ray with exactly the resources a training job was given."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

log = logging.getLogger(__name__)

# Ray starts workers at nice 15; a timed trial must not yield its cores to other work.
WORKER_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "RAY_worker_niceness": "0"}

# Ray Train's controller collects a worker's report only when it polls the worker group (every
# 2 s by default), and a worker's next report waits until the previous one was collected: every
# data-parallel epoch shorter than the interval was stretched to it (a 1.4 s demo epoch took
# 2.0 s; on 32 GPUs an epoch of the paper's study computes in ~0.5 s). A poll is one small task
# per worker, so polling often costs little. A value set in the environment is kept.
TRAIN_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
TRAIN_POLL_SECONDS = 0.05


def train_poll_seconds() -> float:
    """The Ray Train controller's poll interval this job uses (the environment's, else ours)."""
    return float(os.environ.get(TRAIN_POLL_ENV, TRAIN_POLL_SECONDS))


def start_ray(
    address: str | None, backend_env: Mapping[str, str], num_cpus: int, num_gpus: int
) -> dict[str, float]:
    """Join the cluster at ``address``, or start a local Ray limited to the job's share.

    Workers get :data:`WORKER_ENV` and ``backend_env`` (the backend's ``worker_env``), and
    Ray Train's controllers poll every :func:`train_poll_seconds`.

    The dashboard stays off: its job API runs code for anyone who can reach its port.
    Returns the cluster's total resources, recorded in summary.json.
    """
    import ray

    # Inside `distmis ray-cluster` (SLURM jobs) the launcher exports the cluster's address.
    address = address or os.environ.get("RAY_ADDRESS")
    # Ray Train hands the poll interval from the process calling fit() to its controller: the
    # driver in data mode (its own environment), a Tune trial in hybrid mode (the job's).
    os.environ[TRAIN_POLL_ENV] = str(train_poll_seconds())
    runtime_env = {
        "env_vars": {
            **WORKER_ENV,
            **backend_env,
            TRAIN_POLL_ENV: os.environ[TRAIN_POLL_ENV],
            "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        }
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
