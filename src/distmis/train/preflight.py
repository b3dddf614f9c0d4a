"""The GPU preflight: before a grid trains, the framework must see the GPUs it was given.

A GPU run that silently trained on the CPU would file CPU timings as GPU ones; so with
``use_gpu: true`` nothing trains until this check has passed on the node:

- ``distmis preflight --backend B [--gpus N] [--nccl]`` (a user on a compute node; rule
  ``preflight``, once per backend on the training partition, before the first training job)
  prints what it found and exits 2 with one line when the backend cannot train on N GPUs;
- every training job runs it again (:func:`require_gpus`, in a child process so the driver
  neither loads the framework nor holds a CUDA context for the whole job);
- every worker checks its own device when it starts (the backends' ``training_device``).

The report (``results/preflight/{backend}.json``, format :data:`FORMAT`): ``host``,
``backend``, ``use_gpu``, ``gpus_expected``, ``cuda_visible_devices``,
``slurm_gpus_on_node``, ``driver`` (the
NVIDIA kernel module, or null), ``ray`` (its version, or null), the backend's facts
(``framework``, ``cuda_build``, ``cudnn_build``, ``gpus``: index, name, compute capability and
a kernel run on each; ``nccl``: version or error; torch adds ``arch_list``), ``problems``
(each with its fix; empty when it passed) and ``checked_at``.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

from distmis import backends
from distmis.cluster.nvidia import driver_version
from distmis.errors import DeviceError, DistmisError

FORMAT = "distmis-preflight/1"
# A framework import, a CUDA context and one kernel per GPU; minutes mean a hung driver.
TIMEOUT_SECONDS = 600


def check(backend: str, *, gpus: int, check_nccl: bool = False) -> dict[str, Any]:
    """The preflight report of ``backend`` on this host for ``gpus`` GPUs (0: a CPU run,
    which records what is there and asks for nothing)."""
    if gpus < 0:
        raise ValueError(f"gpus must be >= 0, got {gpus}")
    chosen = backends.get(backend)
    facts = chosen.device_report(check_nccl=check_nccl and gpus > 1)
    driver = driver_version()
    problems = chosen.device_problems(facts, expected_gpus=gpus, driver=driver) if gpus else []
    return {
        "format": FORMAT,
        "host": socket.gethostname(),
        "backend": backend,
        "use_gpu": gpus > 0,
        "gpus_expected": gpus,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        # What SLURM says it gave the job on this node (None outside SLURM).
        "slurm_gpus_on_node": os.environ.get("SLURM_GPUS_ON_NODE"),
        "driver": driver,
        "ray": _version("ray"),
        **facts,
        "problems": problems,
        "checked_at": time.time(),
    }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def raise_for_problems(report: Mapping[str, Any]) -> None:
    """The report's :class:`DeviceError`, if it found any problem."""
    if report["problems"]:
        raise DeviceError(
            report["host"], report["framework"], report["cuda_build"], tuple(report["problems"])
        )


def describe(report: Mapping[str, Any]) -> str:
    """The report for a person: one fact per line."""
    facts = [
        ("host", report["host"]),
        (
            "framework",
            f"{report['framework']} (CUDA build {report['cuda_build'] or 'none'}, "
            f"cuDNN {report['cudnn_build'] or 'none'})",
        ),
    ]
    if report.get("arch_list"):
        facts.append(("architectures", " ".join(report["arch_list"])))
    facts += [
        ("driver", report["driver"] or "none"),
        ("CUDA_VISIBLE_DEVICES", report["cuda_visible_devices"] or "unset"),
        ("SLURM_GPUS_ON_NODE", report["slurm_gpus_on_node"] or "unset (not a SLURM GPU job)"),
        ("Ray", report["ray"] or "not installed"),
    ]
    for gpu in report["gpus"]:
        facts.append(
            (
                f"GPU {gpu['index']}",
                f"{gpu['name']} (compute capability {gpu['compute_capability']}), "
                f"kernel {gpu['kernel']}",
            )
        )
    if not report["gpus"]:
        facts.append(("GPUs", "none"))
    nccl = report["nccl"]
    if nccl["version"] or nccl["error"]:
        facts.append(("NCCL", nccl["version"] or nccl["error"]))
    expected = report["gpus_expected"]
    if not expected:
        facts.append(("check", "CPU run: nothing asked of the GPUs"))
    else:
        verdict = "failed" if report["problems"] else "ok"
        facts.append(("check", f"{verdict} ({expected} GPU(s) expected)"))
    return "\n".join(f"{name:<21}{value}" for name, value in facts)


def require_gpus(backend: str, gpus: int, *, check_nccl: bool) -> dict[str, Any]:
    """:func:`check` in a child process (``distmis preflight --json``); its report, or the
    :class:`DeviceError` it found."""
    command = [
        *(sys.executable, "-m", "distmis.cli", "preflight", "--backend", backend),
        *("--gpus", str(gpus), "--json"),
        *(("--nccl",) if check_nccl else ()),
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired as exc:
        raise DistmisError(
            f"the GPU preflight on {socket.gethostname()} did not finish in {TIMEOUT_SECONDS} s; "
            "check the node with nvidia-smi"
        ) from exc
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise DistmisError(
            f"the GPU preflight on {socket.gethostname()} failed (exit {result.returncode}): {last}"
        ) from None
    raise_for_problems(report)
    return report
