"""What a training job for G GPUs asks a scheduler for."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class JobShape:
    """Nodes, GPUs per node and CPUs per node of one training job.

    Without GPUs, G counts CPU workers and ``gpus_per_node`` still decides how many share a
    node, so a CPU-only cluster is laid out exactly as the GPU one would be.
    """

    nodes: int
    workers_per_node: int
    gpus_per_node: int
    cpus_per_node: int


def job_shape(gpus: int, gpus_per_node: int, cpus_per_worker: int, use_gpu: bool) -> JobShape:
    """``nodes = ceil(G / gpus_per_node)``; workers spread evenly, the last node may hold fewer."""
    if gpus < 1 or gpus_per_node < 1 or cpus_per_worker < 1:
        raise ValueError(
            f"need gpus, gpus_per_node, cpus_per_worker >= 1; got {gpus}, {gpus_per_node}, {cpus_per_worker}"
        )
    nodes = -(-gpus // gpus_per_node)
    per_node = -(-gpus // nodes)
    return JobShape(
        nodes=nodes,
        workers_per_node=per_node,
        gpus_per_node=per_node if use_gpu else 0,
        cpus_per_node=per_node * cpus_per_worker,
    )
