from __future__ import annotations

import re
import subprocess
import sys
import time

import psutil
import pytest

from distmis.cluster.ray_cluster import PORT_BLOCK, ports_for_job
from distmis.cluster.ray_node import terminate_tree
from distmis.cluster.resources import job_shape


@pytest.mark.parametrize(
    ("gpus", "per_node", "expected"),
    [
        (1, 4, (1, 1)),
        (2, 4, (1, 2)),
        (4, 4, (1, 4)),
        (8, 4, (2, 4)),
        (32, 4, (8, 4)),
        (6, 4, (2, 3)),
    ],
)
def test_job_shape_nodes_and_workers_per_node(gpus, per_node, expected):
    shape = job_shape(gpus, per_node, cpus_per_worker=10, use_gpu=True)
    assert (shape.nodes, shape.workers_per_node) == expected
    assert shape.gpus_per_node == expected[1] and shape.cpus_per_node == 10 * expected[1]


def test_cpu_only_jobs_request_no_gpus():
    shape = job_shape(8, 4, cpus_per_worker=2, use_gpu=False)
    assert (shape.nodes, shape.gpus_per_node, shape.cpus_per_node) == (2, 0, 8)
    with pytest.raises(ValueError):
        job_shape(0, 4, 1, False)


def _ports(args: list[str]) -> set[int]:
    return {int(m.group(1)) for a in args if (m := re.search(r"port=(\d+)$", a))}


def test_two_jobs_get_disjoint_port_blocks():
    first, second = ports_for_job(1234), ports_for_job(1235)
    a = _ports(first.node_args(head=True)) | set(range(first.base + 10, first.base + PORT_BLOCK))
    b = _ports(second.node_args(head=True)) | set(range(second.base + 10, second.base + PORT_BLOCK))
    assert not a & b
    assert all(first.base <= p < first.base + PORT_BLOCK for p in a)
    # Every fixed-default Ray port is pinned inside the block, on head and worker nodes alike.
    for flag in (
        "--port",
        "--ray-client-server-port",
        "--dashboard-agent-listen-port",
        "--node-manager-port",
    ):
        assert any(arg.startswith(flag + "=") for arg in first.node_args(head=True))
    assert not any(arg.startswith("--port=") for arg in first.node_args(head=False))


def test_terminate_tree_stops_children_in_their_own_session():
    # A parent that starts a grandchild in its own session, like Ray's raylet and workers.
    script = (
        "import subprocess, sys, time;"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True);"
        "time.sleep(600)"
    )
    parent = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 10
    while not psutil.Process(parent.pid).children() and time.time() < deadline:
        time.sleep(0.05)
    tree = [psutil.Process(parent.pid), *psutil.Process(parent.pid).children(recursive=True)]
    assert len(tree) == 2
    terminate_tree(parent.pid, grace=5)
    parent.wait(5)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in tree)
