"""``python -m distmis.cluster.ray_node start ... --block``: one Ray node that dies cleanly.

``ray start --block`` does not take its raylet, GCS and workers down when it alone is sent
SIGTERM (as ``srun`` forwards a cancel to the task it started), and processes that outlive
the job step escape SLURM's process tracking. This wrapper runs it in its own process group
and, on SIGTERM/SIGINT/SIGHUP or when it exits, terminates the whole tree it started.

Two independent nets catch what the tree walk could miss: the wrapper is a child subreaper,
so a process orphaned when its parent dies first (``ray start`` on a cancel) is re-parented
to the wrapper instead of init and stays in the tree; and the final sweep also stops every
process of this user whose command line names the node's ``--temp-dir`` (the GCS, raylet
and agents all do), however it left the tree.

The wrapper also owns the job's node-cache scope on its node (``$DISTMIS_CACHE_SCOPE`` under
``$DISTMIS_CACHE_DIR``, set by ``distmis ray-cluster``; :mod:`distmis.shards.node_cache`): it
sweeps scopes left by dead runs, creates the job's, and removes it with everything cached in
it when it exits. Tens of GB in ``/dev/shm`` must not outlive the job.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from distmis.shards import node_cache

# Ray drains for up to 30 s on SIGTERM; a cancelled job has no work worth draining, and
# SLURM SIGKILLs the step after KillWait (often 30 s, 5 s in the tests), so be quick.
GRACE_SECONDS = 2.0


def _tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def terminate_tree(pid: int, grace: float = GRACE_SECONDS) -> None:
    """SIGTERM ``pid`` and every descendant, SIGKILL those still alive after ``grace`` s."""
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    terminate_processes(_tree(root), grace)


def terminate_processes(processes: list[psutil.Process], grace: float = GRACE_SECONDS) -> None:
    """SIGTERM ``processes`` (psutil guards against reused pids), SIGKILL survivors."""
    alive = [p for p in processes if p.is_running()]
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, survivors = psutil.wait_procs(alive, timeout=grace)
    for proc in survivors:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def processes_using(temp_dir: str | os.PathLike[str]) -> list[psutil.Process]:
    """This user's processes whose command line names ``temp_dir`` (a Ray node's files).

    Matches ``temp_dir`` itself as an argument value or as a path prefix, never a longer name
    (``/tmp/ray-job15`` does not match ``/tmp/ray-job150``); never this process.
    """
    root = os.fspath(temp_dir).rstrip("/")
    me, uid = os.getpid(), os.getuid()
    found = []
    for proc in psutil.process_iter(["cmdline", "uids"]):
        cmdline, uids = proc.info["cmdline"], proc.info["uids"]
        if proc.pid == me or not cmdline or uids is None or uids.real != uid:
            continue
        for arg in cmdline:
            value = arg.split("=", 1)[1] if arg.startswith("-") and "=" in arg else arg
            if value.rstrip("/") == root or root + "/" in value:
                found.append(proc)
                break
    return found


def _temp_dir(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith("--temp-dir="):
            return arg.split("=", 1)[1]
        if arg == "--temp-dir" and i + 1 < len(argv):
            return argv[i + 1]
    return None


PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36


def _prctl(option: int, value: int) -> None:
    """Linux's prctl(2); a no-op where there is no glibc."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(option, value)


def _become_subreaper() -> None:
    """Adopt our orphaned descendants (Linux), so they stay in our tree and SLURM's."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1)


def _die_with_parent() -> None:
    """Get SIGTERM when the launcher that started us dies, however it dies (Linux).

    If SLURM SIGKILLs the launcher before it has stopped Ray, this wrapper would be orphaned,
    leave the job step's process tree, and keep Ray running; with the parent-death signal it
    takes its tree down instead.
    """
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def main(argv: list[str]) -> int:
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before the signal was armed
        return 1
    _become_subreaper()
    temp_dir = _temp_dir(argv)
    scope = None
    if os.environ.get(node_cache.SCOPE_ENV):
        scope = node_cache.CacheScope.create(
            node_cache.cache_root(), os.environ[node_cache.SCOPE_ENV]
        )
    ray_bin = str(Path(sys.executable).with_name("ray"))
    child = subprocess.Popen([ray_bin, *argv], start_new_session=True)

    def stop(signum: int, frame) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    # Remember the tree while it is whole: on a cancel SLURM signals every process at once,
    # `ray start` may exit first and its raylet and GCS would no longer be found under it.
    known: dict[int, psutil.Process] = {}
    root = psutil.Process(child.pid)
    try:
        while child.poll() is None:
            for proc in _tree(root):
                known.setdefault(proc.pid, proc)
            time.sleep(0.5)
        return child.returncode
    finally:
        # SLURM and the launcher may both signal us: a second signal must not cut the
        # cleanup short (the handler would raise again inside this block).
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        for proc in _tree(root):
            known.setdefault(proc.pid, proc)
        terminate_processes(list(known.values()))
        # Orphans re-parented to us while the others died, and anything naming our temp dir.
        leftovers = {p.pid: p for p in psutil.Process().children(recursive=True)}
        if temp_dir is not None:
            leftovers.update((p.pid, p) for p in processes_using(temp_dir))
        terminate_processes(list(leftovers.values()))
        if scope is not None:
            scope.remove()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
