"""``python -m distmis.cluster.ray_node start ... --block``: one Ray node that dies cleanly.

``ray start --block`` does not take its raylet, GCS and workers down when it alone is sent
SIGTERM (as ``srun`` forwards a cancel to the task it started), and processes that outlive
the job step escape SLURM's process tracking. This wrapper runs it in its own process group
and, on SIGTERM/SIGINT/SIGHUP or when it exits, terminates the whole tree it started.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from pathlib import Path

import psutil

GRACE_SECONDS = 10.0


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
    processes = _tree(root)
    for proc in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(processes, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def main(argv: list[str]) -> int:
    ray_bin = str(Path(sys.executable).with_name("ray"))
    child = subprocess.Popen([ray_bin, *argv], start_new_session=True)

    def stop(signum: int, frame) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    try:
        return child.wait()
    finally:
        terminate_tree(child.pid)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
