from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time

import psutil
import pytest

from distmis.cluster.ray_cluster import PORT_BLOCK, ports_for_job
from distmis.cluster.ray_node import processes_using, terminate_processes, terminate_tree
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


def test_processes_using_finds_a_detached_process_by_its_temp_dir(tmp_path):
    # A process that left every tree (double fork, own session) but names the node's files,
    # as an orphaned raylet or GCS does; and one naming a longer directory that must survive.
    temp_dir, other = tmp_path / "ray-job15", tmp_path / "ray-job150"
    sleeper = "import time, sys; time.sleep(600)"
    launch = (
        "import subprocess, sys;"
        f"p = subprocess.Popen([sys.executable, '-c', {sleeper!r}, sys.argv[1]], start_new_session=True,"
        " stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL);"
        "print(p.pid)"
    )
    pids = []
    for arg in (f"--log_dir={temp_dir}/session_1/logs", f"--log_dir={other}/session_1/logs"):
        out = subprocess.run([sys.executable, "-c", launch, arg], capture_output=True, text=True)
        pids.append(int(out.stdout))
    orphan, bystander = (psutil.Process(pid) for pid in pids)
    try:
        assert orphan.ppid() != 0 and [p.pid for p in processes_using(temp_dir)] == [orphan.pid]
        terminate_processes(processes_using(temp_dir), grace=5)
        psutil.wait_procs([orphan], timeout=5)
        assert not orphan.is_running() or orphan.status() == psutil.STATUS_ZOMBIE
        assert bystander.is_running()
    finally:
        for proc in (orphan, bystander):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()


def test_node_wrapper_adopts_and_stops_orphans_of_the_command(tmp_path):
    """The wrapper's command exits at once, leaving an orphan behind: the wrapper (a child
    subreaper) still finds and stops it when it exits."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    # The wrapper runs `ray` beside its Python: a fake one that orphans a sleeper and exits.
    (fake_bin / "python").symlink_to(sys.executable)
    pid_file = tmp_path / "orphan.pid"
    (fake_bin / "ray").write_text(
        f"#!{sys.executable}\n"
        "import subprocess, sys\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'],"
        " stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
    )
    (fake_bin / "ray").chmod(0o755)
    result = subprocess.run(
        [str(fake_bin / "python"), "-m", "distmis.cluster.ray_node", "start", "--block"],
        # The symlinked interpreter is outside the venv: hand it this one's import path.
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
        timeout=60,
    )
    assert result.returncode == 0
    orphan = int(pid_file.read_text())
    assert not psutil.pid_exists(orphan) or psutil.Process(orphan).status() == psutil.STATUS_ZOMBIE
