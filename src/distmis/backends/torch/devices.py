"""What PyTorch sees of this host's GPUs, and what keeps it from training on them.

PyPI's torch 2.13 for Linux x86_64 is a CUDA 13 build: it needs an R580 driver and carries
kernels for compute capability 7.5 and newer. On an older driver ``torch.cuda.is_available()``
says no; on a V100 (sm_70) it says yes and the first kernel fails ("no kernel image is
available"). Both are found here before anything trains; the fix is PyTorch's CUDA 12.6
build (``train.torch_cuda: cu126``). :func:`report` and :func:`problems` are the backend's half
of :mod:`distmis.train.preflight`; :func:`training_device_error` is each worker's own check.
"""

from __future__ import annotations

import socket
import warnings
from typing import Any

import torch

from distmis.cluster.nvidia import NO_DRIVER_FIX, driver_too_old, driver_version, too_few_gpus
from distmis.errors import DeviceError

ENV_FILE = "envs/train-torch.yaml"
OLD_GPU_FIX = "set train.torch_cuda: cu126 (envs/train-torch-cu126.yaml, PyTorch's CUDA 12.6 build)"
CHECK_SIZE = 64


def supports(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether a build with ``arch_list`` (``torch.cuda.get_arch_list()``: ``sm_XY`` cubins,
    ``compute_XY`` PTX) runs kernels on a GPU of ``capability``: a cubin of the same major
    version and no newer minor, or PTX of no newer version (the driver compiles it)."""
    major, minor = capability
    for arch in arch_list:
        kind, _, digits = arch.partition("_")
        if not digits.isdigit():
            continue
        arch_major, arch_minor = int(digits[:-1]), int(digits[-1])
        if kind == "sm" and arch_major == major and arch_minor <= minor:
            return True
        if kind == "compute" and (arch_major, arch_minor) <= (major, minor):
            return True
    return False


def _check_kernel(index: int) -> str:
    """``"ok"``, or why a small matmul on GPU ``index`` failed or came back wrong."""
    try:
        ones = torch.ones(CHECK_SIZE, CHECK_SIZE, device=f"cuda:{index}")
        total = float((ones @ ones).sum())
    except Exception as exc:  # noqa: BLE001 - whatever the runtime raised is the finding
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return "ok" if total == CHECK_SIZE**3 else f"matmul gave {total}, not {CHECK_SIZE**3}"


def _nccl(check: bool) -> dict[str, Any]:
    if not check:
        return {"version": None, "error": None}
    if not torch.distributed.is_available() or not torch.distributed.is_nccl_available():
        return {"version": None, "error": "this torch build has no NCCL backend"}
    try:
        version = torch.cuda.nccl.version()
    except Exception as exc:  # noqa: BLE001 - a library that does not load is the finding
        return {"version": None, "error": f"{type(exc).__name__}: {exc}"}
    return {"version": ".".join(map(str, version)), "error": None}


def report(*, check_nccl: bool) -> dict[str, Any]:
    """The framework's facts: build (CUDA, cuDNN, architectures), GPUs (name, compute
    capability, a kernel run on each), NCCL when asked."""
    with warnings.catch_warnings(record=True) as caught:
        # An old driver is reported as a warning here; it is kept as the finding.
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    gpus = []
    for index in range(torch.cuda.device_count() if available else 0):
        capability = torch.cuda.get_device_capability(index)
        gpus.append(
            {
                "index": index,
                "name": torch.cuda.get_device_name(index),
                "compute_capability": f"{capability[0]}.{capability[1]}",
                "kernel": _check_kernel(index),
            }
        )
    return {
        "framework": f"PyTorch {torch.__version__}",
        "cuda_build": torch.version.cuda,
        "cudnn_build": str(torch.backends.cudnn.version()) if torch.version.cuda else None,
        "arch_list": torch.cuda.get_arch_list() if torch.version.cuda else [],
        "cuda_warnings": [str(w.message).splitlines()[0] for w in caught],
        "gpus": gpus,
        "nccl": _nccl(check_nccl and available),
    }


def problems(facts: dict[str, Any], *, expected_gpus: int, driver: str | None) -> list[str]:
    """What keeps PyTorch from training on ``expected_gpus`` GPUs here, each with its fix."""
    if not facts["cuda_build"]:
        return [f"is a CPU-only build; fix: use {ENV_FILE} (PyPI's CUDA 13 build) or {OLD_GPU_FIX}"]
    found = []
    gpus = facts["gpus"]
    if not gpus:
        if driver is None:
            fix = NO_DRIVER_FIX
        elif (needed := driver_too_old(driver, facts["cuda_build"])) is not None:
            fix = f"driver {driver} is older than the R{needed} this build needs: {OLD_GPU_FIX}"
        else:
            fix = "check the job's gres and CUDA_VISIBLE_DEVICES, and the node with nvidia-smi"
        warning = f" ({facts['cuda_warnings'][0]})" if facts["cuda_warnings"] else ""
        found.append(f"sees no CUDA device{warning}; fix: {fix}")
    elif (too_few := too_few_gpus(len(gpus), expected_gpus)) is not None:
        found.append(too_few)
    for gpu in gpus:
        capability = tuple(int(part) for part in gpu["compute_capability"].split("."))
        if not supports(capability, facts["arch_list"]):
            found.append(
                f"has no kernels for GPU {gpu['index']} ({gpu['name']}, compute capability "
                f"{gpu['compute_capability']}; built for {' '.join(facts['arch_list'])}); fix: "
                f"{OLD_GPU_FIX}"
            )
        elif gpu["kernel"] != "ok":
            found.append(
                f"a kernel failed on GPU {gpu['index']} ({gpu['name']}): {gpu['kernel']}; fix: "
                "check the node with nvidia-smi"
            )
    if facts["nccl"]["error"] is not None:
        found.append(
            f"cannot use NCCL for G > 1 ({facts['nccl']['error']}); fix: use {ENV_FILE}, whose "
            "torch brings its nvidia-nccl wheel"
        )
    return found


def training_device_error(device: torch.device) -> DeviceError | None:
    """Why this worker cannot train on ``device`` (a CUDA device it was given), or None."""
    facts = {
        "framework": f"PyTorch {torch.__version__}",
        "cuda_build": torch.version.cuda,
        "arch_list": torch.cuda.get_arch_list() if torch.version.cuda else [],
        "cuda_warnings": [],
        "nccl": {"version": None, "error": None},
        "gpus": [],
    }
    if torch.version.cuda and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        capability = torch.cuda.get_device_capability(index)
        facts["gpus"] = [
            {
                "index": index,
                "name": torch.cuda.get_device_name(index),
                "compute_capability": f"{capability[0]}.{capability[1]}",
                # The skeleton's first step runs the real kernels; the architecture is what
                # must be known before then.
                "kernel": "ok",
            }
        ]
    found = problems(facts, expected_gpus=1, driver=driver_version())
    if not found:
        return None
    return DeviceError(socket.gethostname(), facts["framework"], facts["cuda_build"], tuple(found))
