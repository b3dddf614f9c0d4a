"""One Ray cluster across the nodes of a SLURM allocation, for as long as one command runs.

Run inside the job (``distmis ray-cluster -- <command>``): the head starts on the node the
job script runs on, one worker per other node through ``srun --overlap``; the command runs
once every node has joined (the cluster is polled, no fixed sleeps), with ``RAY_ADDRESS``
set; then every Ray process is stopped, whether the command succeeded, failed, or the job
was cancelled or hit its time limit (SIGTERM/SIGINT/SIGHUP handlers).

Ray's token authentication is on with a token made for the job, so only the job's own
processes can join the cluster or run work on it. Two jobs on one node must not collide: each job gets its own port block, derived from the
SLURM job id, and its own Ray temp dir. The dashboard is off (its job API runs code for
anyone who can reach it). ``ray stop`` is never used: it kills every Ray on the node,
other jobs' included.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from distmis.cluster.ray_node import processes_using, terminate_processes
from distmis.errors import DistmisError
from distmis.shards import node_cache

log = logging.getLogger(__name__)

PORT_BASE = 20000
PORT_BLOCK = 100  # ports per job: 10 service ports + 90 worker ports
PORT_BLOCKS = 400  # 20000..59999
JOIN_TIMEOUT_SECONDS = 300.0
# Teardown must finish inside SLURM's KillWait, after which everything is SIGKILLed and
# processes that left the step's process tree would survive.
STOP_GRACE_SECONDS = 4.0


class ClusterError(DistmisError):
    """The Ray cluster could not be started or did not assemble."""


@dataclass(frozen=True)
class Ports:
    """A job's port block; every Ray service port is pinned inside it."""

    base: int

    @property
    def gcs(self) -> int:
        return self.base

    def node_args(self, head: bool) -> list[str]:
        b = self.base
        args = [
            f"--node-manager-port={b + 1}",
            f"--object-manager-port={b + 2}",
            f"--dashboard-agent-listen-port={b + 3}",
            f"--dashboard-agent-grpc-port={b + 4}",
            f"--metrics-export-port={b + 5}",
            f"--runtime-env-agent-port={b + 6}",
            f"--min-worker-port={b + 10}",
            f"--max-worker-port={b + PORT_BLOCK - 1}",
        ]
        if head:
            args += [f"--port={self.gcs}", f"--ray-client-server-port={b + 7}"]
        return args


def ports_for_job(job_id: int) -> Ports:
    """A port block per job id; two jobs share one only if their ids differ by 400·k."""
    return Ports(PORT_BASE + (job_id % PORT_BLOCKS) * PORT_BLOCK)


def expand_nodelist(nodelist: str) -> list[str]:
    """Host names of a SLURM node list (``node[1-3]``), via ``scontrol show hostnames``."""
    result = subprocess.run(
        ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise ClusterError(f"scontrol show hostnames {nodelist!r} failed: {result.stderr.strip()}")
    return result.stdout.split()


def job_nodes(job_id: str, environ: Mapping[str, str]) -> list[str]:
    """Every node of the job's allocation.

    Asked of the controller, not read from SLURM_JOB_NODELIST: inside a job step (Snakemake's
    SLURM jobstep plugin runs each job under ``srun -n1`` with the SLURM variables cleared)
    that variable can name only the step's node.
    """
    result = subprocess.run(
        ["scontrol", "show", "job", "--oneliner", job_id],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"(?:^|\s)NodeList=(\S+)", result.stdout)
    if result.returncode == 0 and match and match.group(1) != "(null)":
        return expand_nodelist(match.group(1))
    nodelist = environ.get("SLURM_JOB_NODELIST")
    if not nodelist:
        raise ClusterError(f"cannot find the nodes of SLURM job {job_id}: {result.stderr.strip()}")
    return expand_nodelist(nodelist)


def node_address(host: str) -> str:
    """IPv4 address other nodes reach ``host`` at."""
    try:
        return socket.gethostbyname(host)
    except OSError as exc:
        raise ClusterError(f"cannot resolve node {host}: {exc}") from exc


def _accepts(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((address, port)) == 0


def _port_free(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


@dataclass
class RayCluster:
    """The processes of one job's Ray cluster (head local, workers via srun)."""

    nodes: Sequence[str]
    address: str
    ports: Ports
    temp_dir: Path
    cpus_per_node: int
    gpus_per_node: int
    node_wrapper: Sequence[str]  # runs `ray <args>` and cleans up its process tree
    env: dict[str, str]
    processes: list[subprocess.Popen]

    @property
    def gcs_address(self) -> str:
        return f"{self.address}:{self.ports.gcs}"

    def _resources(self) -> list[str]:
        return [f"--num-cpus={self.cpus_per_node}", f"--num-gpus={self.gpus_per_node}"]

    def start(self) -> None:
        head = self.nodes[0]
        if not _port_free(self.address, self.ports.gcs):
            raise ClusterError(
                f"port {self.ports.gcs} on {head} is taken; another Ray job uses this block"
            )
        common = [f"--temp-dir={self.temp_dir}", "--disable-usage-stats", "--block"]
        head_cmd = [
            *self.node_wrapper,
            "start",
            "--head",
            f"--node-ip-address={self.address}",
            "--include-dashboard=false",
            *self.ports.node_args(head=True),
            *self._resources(),
            *common,
        ]
        log.info("starting Ray head on %s at %s", head, self.gcs_address)
        # The head runs in this job step; start_new_session keeps terminal signals off it so
        # shutdown happens in order, through stop().
        self.processes.append(subprocess.Popen(head_cmd, env=self.env, start_new_session=True))
        for node in self.nodes[1:]:
            worker_cmd = [
                "srun",
                "--overlap",
                "--nodes=1",
                "--ntasks=1",
                f"--nodelist={node}",
                *self.node_wrapper,
                "start",
                f"--address={self.gcs_address}",
                f"--node-ip-address={node_address(node)}",
                *self.ports.node_args(head=False),
                *self._resources(),
                *common,
            ]
            log.info("starting Ray worker on %s", node)
            self.processes.append(
                subprocess.Popen(worker_cmd, env=self.env, start_new_session=True)
            )

    def wait_until_joined(self, timeout: float = JOIN_TIMEOUT_SECONDS) -> None:
        """Poll until every node is alive; fail fast if one of our Ray processes exits."""
        import ray

        deadline = time.monotonic() + timeout
        # A ray.init against a GCS that is not listening yet leaves the client in a state
        # where later attempts time out too, so wait for the port before connecting.
        while not _accepts(self.address, self.ports.gcs):
            self._check_processes(deadline, timeout)
            time.sleep(0.2)
        ray.init(address=self.gcs_address, log_to_driver=False, logging_level=logging.WARNING)
        try:
            while True:
                alive = sum(1 for node in ray.nodes() if node["Alive"])
                if alive == len(self.nodes):
                    log.info("all %d nodes joined", alive)
                    return
                self._check_processes(deadline, timeout)
                time.sleep(0.5)
        finally:
            ray.shutdown()

    def _check_processes(self, deadline: float, timeout: float) -> None:
        for proc in self.processes:
            if proc.poll() is not None:
                raise ClusterError(
                    f"Ray process {' '.join(map(str, proc.args[:6]))} exited with {proc.returncode}"
                )
        if time.monotonic() > deadline:
            raise ClusterError(f"not all {len(self.nodes)} nodes joined within {timeout:.0f} s")

    def stop(self) -> None:
        """SIGTERM every Ray process we started, SIGKILL what is left after a grace period."""
        for proc in self.processes:
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for proc in self.processes:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        # The node wrappers clean up their own trees; should one have been killed before it
        # finished, whatever still names this job's temp dir on this node goes now.
        terminate_processes(processes_using(self.temp_dir))


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


class _Terminated(Exception):
    pass


def _raise_on_signal(signum: int, frame) -> None:
    raise _Terminated(signal.Signals(signum).name)


def run_with_ray_cluster(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cpus_per_node: int,
    gpus_per_node: int,
    cache_dir: str | None = None,
) -> int:
    """Start Ray across the allocation, run ``command`` on the head, stop Ray; return its status.

    The job's node caches (:mod:`distmis.shards.node_cache`) live in scope ``slurm-<job id>``
    under ``cache_dir``'s root on every node; each node's wrapper creates it and removes it
    when Ray stops there, and this launcher removes the head node's once more at the end.
    """
    environ = dict(os.environ if env is None else env)
    if "SLURM_JOB_ID" not in environ:
        raise ClusterError("not inside a SLURM allocation (SLURM_JOB_ID is unset)")
    job_id = int(environ["SLURM_JOB_ID"])
    nodes = job_nodes(str(job_id), environ)
    # The job script runs on the first node of the allocation: that node is the head.
    here = socket.gethostname()
    if here in nodes:
        nodes.remove(here)
        nodes.insert(0, here)
    node_wrapper = [sys.executable, "-m", "distmis.cluster.ray_node"]
    # A token per job: only processes of this job (which inherit it) can join or submit work.
    environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    cache_root = node_cache.cache_root(cache_dir)
    # Read by the node wrappers (owners of each node's scope) and by `distmis train`.
    environ[node_cache.ROOT_ENV] = str(cache_root)
    environ[node_cache.SCOPE_ENV] = f"slurm-{job_id}"
    os.environ.update(
        RAY_AUTH_MODE=environ["RAY_AUTH_MODE"], RAY_AUTH_TOKEN=environ["RAY_AUTH_TOKEN"]
    )
    cluster = RayCluster(
        nodes=nodes,
        address=node_address(nodes[0]),
        ports=ports_for_job(job_id),
        temp_dir=Path(f"/tmp/ray-job{job_id}"),
        cpus_per_node=cpus_per_node,
        gpus_per_node=gpus_per_node,
        node_wrapper=node_wrapper,
        env=environ,
        processes=[],
    )
    previous = {
        s: signal.signal(s, _raise_on_signal)
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    }
    child: subprocess.Popen | None = None
    try:
        cluster.start()
        cluster.wait_until_joined()
        log.info("running %s", " ".join(command))
        child = subprocess.Popen(list(command), env={**environ, "RAY_ADDRESS": cluster.gcs_address})
        return child.wait()
    except _Terminated as exc:
        log.warning("received %s: stopping the command and Ray", exc)
        return 128 + signal.SIGTERM
    finally:
        # A second SIGTERM (SLURM signals every process of the step) must not interrupt the
        # teardown itself.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        # Stop the command and every node at once rather than one after the other.
        if child is not None and child.poll() is None:
            child.terminate()
        cluster.stop()
        node_cache.CacheScope(
            node_cache.scopes_dir(cache_root) / environ[node_cache.SCOPE_ENV]
        ).remove()
        if child is not None and child.poll() is None:
            try:
                child.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                child.kill()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
