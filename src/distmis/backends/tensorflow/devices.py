"""What TensorFlow sees of this host's GPUs, and what keeps it from training on them.

TensorFlow never refuses to run without a GPU: a CPU-only wheel, a CUDA build that finds no
CUDA 12 / cuDNN 9 libraries (the plain ``tensorflow`` wheel ships none; ``tensorflow[and-cuda]``
brings them as ``nvidia-*-cu12`` wheels) or a node without a driver all register no GPU and
train on the CPU. :func:`report` and :func:`problems` are the backend's half of
:mod:`distmis.train.preflight`; :func:`training_device` is each worker's own check.
"""

from __future__ import annotations

import importlib.util
import platform
import socket
from pathlib import Path
from typing import Any

import tensorflow as tf

from distmis.cluster.nvidia import (
    NO_DRIVER_FIX,
    driver_too_old,
    driver_version,
    nccl_version,
    too_few_gpus,
)
from distmis.errors import DeviceError

ENV_FILE = "envs/train-tensorflow.yaml"
# A GPU matmul whose sum is known exactly: the kernel check.
CHECK_SIZE = 64


def _nccl_candidates() -> list[str]:
    """The NCCL of the ``nvidia-nccl-cu12`` wheel (where TensorFlow's RUNPATH looks) first,
    then the system's."""
    found = []
    spec = importlib.util.find_spec("nvidia")
    for root in spec.submodule_search_locations if spec is not None else []:
        library = Path(root) / "nccl" / "lib" / "libnccl.so.2"
        if library.is_file():
            found.append(str(library))
    return [*found, "libnccl.so.2"]


def _check_kernel(index: int) -> str:
    """``"ok"``, or why a small matmul on GPU ``index`` failed or came back wrong."""
    try:
        with tf.device(f"/GPU:{index}"):
            ones = tf.ones((CHECK_SIZE, CHECK_SIZE))
            total = float(tf.reduce_sum(tf.matmul(ones, ones)))
    except Exception as exc:  # noqa: BLE001 - whatever the runtime raised is the finding
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return "ok" if total == CHECK_SIZE**3 else f"matmul gave {total}, not {CHECK_SIZE**3}"


def report(*, check_nccl: bool) -> dict[str, Any]:
    """The framework's facts: build, GPUs (name, compute capability, a kernel run on each),
    NCCL when asked."""
    build = dict(tf.sysconfig.get_build_info())
    devices = tf.config.list_physical_devices("GPU")
    for device in devices:
        # One small check must not reserve the whole card for the lifetime of the process.
        tf.config.experimental.set_memory_growth(device, True)
    gpus = []
    for index, device in enumerate(devices):
        details = tf.config.experimental.get_device_details(device)
        capability = details.get("compute_capability")
        gpus.append(
            {
                "index": index,
                "name": details.get("device_name", device.name),
                "compute_capability": ".".join(map(str, capability)) if capability else None,
                "kernel": _check_kernel(index),
            }
        )
    nccl = {"version": None, "error": None}
    if check_nccl:
        nccl["version"], nccl["error"] = nccl_version(_nccl_candidates())
    return {
        "framework": f"TensorFlow {tf.__version__}",
        "cuda_build": build.get("cuda_version") if tf.test.is_built_with_cuda() else None,
        "cudnn_build": build.get("cudnn_version"),
        "gpus": gpus,
        "nccl": nccl,
    }


def problems(facts: dict[str, Any], *, expected_gpus: int, driver: str | None) -> list[str]:
    """What keeps TensorFlow from training on ``expected_gpus`` GPUs here, each with its fix."""
    if not facts["cuda_build"]:
        return [
            f"is a build without CUDA ({platform.machine()}); fix: install {ENV_FILE} "
            "(tensorflow[and-cuda]) on a Linux x86_64 GPU node"
        ]
    found = []
    gpus = facts["gpus"]
    if not gpus:
        if driver is None:
            fix = NO_DRIVER_FIX
        elif (needed := driver_too_old(driver, facts["cuda_build"])) is not None:
            fix = f"driver {driver} is older than the R{needed} its CUDA build needs: update it"
        else:
            fix = (
                f"driver {driver} is loaded, so the CUDA {facts['cuda_build']} / cuDNN "
                f"{facts['cudnn_build']} libraries are missing: use {ENV_FILE} "
                "(tensorflow[and-cuda] brings them), not the plain tensorflow wheel"
            )
        found.append(f"sees no GPU; fix: {fix}")
    elif (too_few := too_few_gpus(len(gpus), expected_gpus)) is not None:
        found.append(too_few)
    for gpu in gpus:
        if gpu["kernel"] != "ok":
            found.append(
                f"a kernel failed on GPU {gpu['index']} ({gpu['name']}, compute capability "
                f"{gpu['compute_capability']}): {gpu['kernel']}; fix: use {ENV_FILE} and check "
                "the node with nvidia-smi"
            )
    if facts["nccl"]["error"] is not None:
        found.append(
            f"cannot load NCCL for G > 1 ({facts['nccl']['error']}); fix: use {ENV_FILE} "
            "(tensorflow[and-cuda] brings nvidia-nccl-cu12)"
        )
    return found


def training_device(use_gpu: bool) -> tuple[str, str]:
    """``(type, name)`` of what this worker trains on: its first visible GPU, or the CPU.

    Raises :class:`DeviceError` when GPUs were asked for and TensorFlow registered none (it
    would train on the CPU without a word).
    """
    devices = tf.config.list_physical_devices("GPU")
    if use_gpu and not devices:
        facts = report(check_nccl=False)
        raise DeviceError(
            socket.gethostname(),
            facts["framework"],
            facts["cuda_build"],
            tuple(problems(facts, expected_gpus=1, driver=driver_version())),
        )
    if not use_gpu or not devices:
        return "cpu", platform.processor() or platform.machine()
    details = tf.config.experimental.get_device_details(devices[0])
    return "gpu", details.get("device_name", devices[0].name)
