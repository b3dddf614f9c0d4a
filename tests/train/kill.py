"""Killing a training job the way a SLURM time limit does, for the resume tests."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def kill_after_a_result(command: list[str], out: Path, *, timeout: float = 300) -> dict[str, str]:
    """Start ``command`` (a whole job in its own session), SIGKILL its whole process group as
    soon as a configuration under ``out/trials`` has a ``result.json``, and return each
    finished configuration's folder name and ``result.json`` text: what a rerun must keep."""
    job = subprocess.Popen(
        command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + timeout
        while not list((out / "trials").glob("*/result.json")):
            assert job.poll() is None, "training ended before it could be killed"
            assert time.time() < deadline, "no configuration ever finished"
            time.sleep(0.1)
    finally:
        os.killpg(job.pid, signal.SIGKILL)  # like a SLURM time limit: the whole job goes
        job.wait()
    return {p.parent.name: p.read_text() for p in (out / "trials").glob("*/result.json")}
