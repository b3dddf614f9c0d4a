"""What a host says about its NVIDIA stack, without any framework: the kernel driver's version
and whether an NCCL library loads. The backends' GPU preflights
(:mod:`distmis.backends.tensorflow.devices`, :mod:`distmis.backends.torch.devices`) add what
their framework sees."""

from __future__ import annotations

import ctypes
import re
from collections.abc import Sequence
from pathlib import Path

DRIVER_VERSION_FILE = Path("/proc/driver/nvidia/version")
# The oldest driver branch each CUDA major version runs on (NVIDIA's CUDA release notes,
# "minor version compatibility"): a CUDA 13 build needs R580, a CUDA 12 build R525.
MIN_DRIVER_FOR_CUDA = {12: 525, 13: 580}


NO_DRIVER_FIX = "run on a GPU node (the job's partition and gres) with the NVIDIA driver loaded"


def too_few_gpus(seen: int, expected: int) -> str | None:
    """The problem (with its fix) when a framework sees fewer GPUs than a job's node holds."""
    if seen >= expected:
        return None
    return (
        f"sees {seen} GPU(s), the job expects {expected} on this node; fix: ask the scheduler "
        f"for gres gpu:{expected} (train.gpus_per_node)"
    )


def driver_version(path: Path = DRIVER_VERSION_FILE) -> str | None:
    """The NVIDIA kernel module's version (e.g. ``"580.65.06"``), or None without one."""
    try:
        text = path.read_text()
    except OSError:
        return None
    match = re.search(r"Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)", text)
    return match.group(1) if match else None


def driver_too_old(driver: str | None, cuda_build: str | None) -> int | None:
    """The driver branch a ``cuda_build`` (e.g. ``"13.0"``) needs, when ``driver`` is older."""
    if driver is None or not cuda_build:
        return None
    needed = MIN_DRIVER_FOR_CUDA.get(int(cuda_build.split(".")[0]))
    return needed if needed is not None and int(driver.split(".")[0]) < needed else None


def nccl_version(candidates: Sequence[str | Path]) -> tuple[str | None, str | None]:
    """``(version, None)`` of the first NCCL library in ``candidates`` that loads (paths or
    sonames), else ``(None, why)``."""
    errors = []
    for candidate in candidates:
        try:
            library = ctypes.CDLL(str(candidate))
        except OSError as exc:
            errors.append(str(exc))
            continue
        code = ctypes.c_int()
        if library.ncclGetVersion(ctypes.byref(code)) != 0:
            return None, f"{candidate}: ncclGetVersion failed"
        return format_nccl_code(code.value), None
    return None, "; ".join(errors) or "no NCCL library to try"


def format_nccl_code(code: int) -> str:
    """NCCL's integer version as ``major.minor.patch`` (``21903`` → ``2.19.3``; NCCL < 2.9
    counted ``major*1000 + minor*100 + patch``)."""
    if code >= 10000:
        return f"{code // 10000}.{code % 10000 // 100}.{code % 100}"
    return f"{code // 1000}.{code % 1000 // 100}.{code % 100}"
