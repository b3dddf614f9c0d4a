"""The GPU preflight: with use_gpu, nothing trains until the framework shows the GPUs it was
given, and a refusal is one line naming host, framework, CUDA build, what it saw and the fix.

This machine (and CI's) has no GPU and a CPU build of torch, so every real check here is a
refusal; what a GPU node answers is covered by hand-made reports of the frameworks' facts.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from distmis.cluster.nvidia import driver_too_old, driver_version, format_nccl_code
from distmis.config import validate_config
from distmis.errors import DeviceError, DistmisError
from distmis.train import run as train_run
from distmis.train.settings import TrainSettings
from tests.conftest import synthetic_tfrecords

BACKENDS = ("tensorflow", "torch")
ONE_CONFIG = {"lr": [0.005], "norm": ["batch"], "beta_2": [0.999], "amsgrad": [False]}


@pytest.fixture(scope="module")
def tfrecords(tmp_path_factory) -> Path:
    return synthetic_tfrecords(tmp_path_factory.mktemp("data"), cases=8, seed=2)


def distmis(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DISTMIS_CACHE_DIR": str(cwd / "cache")}
    command = [sys.executable, "-m", "distmis.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def refusal_line(stderr: str) -> str:
    """The CLI's one error line (TensorFlow's own start-up lines may come before it)."""
    lines = [line for line in stderr.splitlines() if line.startswith("distmis ")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


# ------------------------------------------------------------------ through the real CLI


@pytest.mark.parametrize("runner", ["local", "ray"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_use_gpu_without_a_gpu_stops_before_anything_trains(backend, runner, tfrecords, tmp_path):
    config = tmp_path / "config.yaml"
    train = {"backend": backend, "use_gpu": True, "epochs": 1, "search_space": ONE_CONFIG}
    config.write_text(yaml.safe_dump({"train": train}))
    out = tmp_path / "run"
    result = distmis(
        *("train", "--mode", "experiment", "--gpus", "1", "--runner", runner),
        *("--data", str(tfrecords), "--out", str(out), "--config", str(config)),
        cwd=tmp_path,
    )
    assert result.returncode == 2
    line = refusal_line(result.stderr)
    framework = {"tensorflow": "TensorFlow", "torch": "PyTorch"}[backend]
    assert line.startswith(f"distmis train: error: GPU check failed on {socket.gethostname()}: ")
    assert framework in line and "CUDA build" in line and "fix: " in line
    # Nothing ran: no Ray, no trial, not even the run's folder.
    assert not out.exists()


def test_preflight_command_prints_what_it_found_and_refuses_in_one_line(tmp_path):
    report = tmp_path / "torch.json"
    result = distmis(
        "preflight", "--backend", "torch", "--gpus", "2", "--out", str(report), cwd=tmp_path
    )
    assert result.returncode == 2
    assert "\nGPUs                 none\n" in result.stdout
    assert "\ncheck                failed (2 GPU(s) expected)" in result.stdout
    line = refusal_line(result.stderr)
    assert "PyTorch" in line and "train.torch_cuda: cu126" in line
    assert not report.exists()  # a failed check leaves no report for a rule to take as done


def test_preflight_of_a_cpu_run_records_the_node_and_passes(tmp_path):
    report = tmp_path / "tensorflow.json"
    result = distmis(
        "preflight", "--backend", "tensorflow", "--gpus", "0", "--out", str(report), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    written = json.loads(report.read_text())
    assert written["format"] == "distmis-preflight/1" and written["problems"] == []
    assert (written["backend"], written["use_gpu"], written["gpus_expected"]) == (
        "tensorflow",
        False,
        0,
    )
    assert written["host"] == socket.gethostname() and written["framework"].startswith("TensorFlow")
    assert written["cuda_build"]  # the PyPI wheel is a CUDA build, even here


# ------------------------------------------------------------------ each worker checks again


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_worker_without_its_gpu_fails_the_job_and_no_trial_is_ok(
    backend, tfrecords, tmp_path, monkeypatch
):
    """The job's own preflight passed (say, on its first node) but a worker finds no GPU:
    its trial fails with the DeviceError and the job fails, instead of training on the CPU."""
    monkeypatch.setattr(train_run, "require_gpus", lambda *args, **kwargs: {})
    config = validate_config(
        {
            "train": {
                "backend": backend,
                "use_gpu": True,
                "epochs": 1,
                "max_failures": 0,
                "search_space": ONE_CONFIG,
            }
        }
    )
    settings = TrainSettings.from_config(
        config["train"], mode="experiment", gpus=1, tfrecord_dir=tfrecords, out_dir=tmp_path / "run"
    )
    monkeypatch.setenv("DISTMIS_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(DistmisError, match=r"DeviceError: GPU check failed on "):
        train_run.run_training(replace(settings, runner="local"))
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["ok_count"] == 0 and summary["failed_count"] == 1
    assert not list((tmp_path / "run/trials").glob("*/result.json"))


def test_workers_record_what_they_trained_on(tfrecords, tmp_path, monkeypatch):
    config = validate_config(
        {"train": {"backend": "torch", "epochs": 1, "search_space": ONE_CONFIG}}
    )
    settings = TrainSettings.from_config(
        config["train"], mode="experiment", gpus=1, tfrecord_dir=tfrecords, out_dir=tmp_path / "run"
    )
    monkeypatch.setenv("DISTMIS_CACHE_DIR", str(tmp_path / "cache"))
    summary = train_run.run_training(replace(settings, runner="local"))
    (worker,) = [
        json.loads(p.read_text()) for p in (tmp_path / "run/trials").glob("*/workers/rank0.json")
    ]
    assert worker["device_type"] == "cpu" and worker["device_name"]
    assert summary["worker_devices"] == [
        {"host": socket.gethostname(), "device_type": "cpu", "device_name": worker["device_name"]}
    ]


# ------------------------------------------------------------------ what a GPU node answers


def test_device_error_crosses_a_process_boundary_whole():
    error = DeviceError("node7", "PyTorch 2.13.0", "13.0", ("sees no CUDA device; fix: x",))
    copy = pickle.loads(pickle.dumps(error))
    assert (
        str(copy)
        == str(error)
        == (
            "GPU check failed on node7: PyTorch 2.13.0 (CUDA build 13.0) sees no CUDA device; fix: x"
        )
    )


def test_driver_version_and_the_driver_a_cuda_build_needs(tmp_path):
    version_file = tmp_path / "version"
    version_file.write_text(
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.127.05  Release Build  "
        "(dvs-builder@U16-I3-B03-4-3)  Tue Oct  8 03:18:27 UTC 2024\nGCC version:  gcc 12.2.0\n"
    )
    assert driver_version(version_file) == "550.127.05"
    assert driver_version(tmp_path / "absent") is None
    assert driver_too_old("550.127.05", "13.0") == 580
    assert driver_too_old("580.65.06", "13.0") is None
    assert driver_too_old("550.127.05", "12.6") is None
    assert driver_too_old(None, "13.0") is None
    assert (format_nccl_code(22903), format_nccl_code(2708)) == ("2.29.3", "2.7.8")


H100 = {"index": 0, "name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "kernel": "ok"}
V100 = {"index": 0, "name": "Tesla V100-SXM2-32GB", "compute_capability": "7.0", "kernel": "ok"}
CU13_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]
CU126_ARCHS = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]


def torch_facts(gpus, arch_list=CU13_ARCHS, cuda="13.0", warnings=()):
    return {
        "framework": "PyTorch 2.13.0",
        "cuda_build": cuda,
        "cudnn_build": "92000",
        "arch_list": arch_list,
        "cuda_warnings": list(warnings),
        "gpus": gpus,
        "nccl": {"version": "2.29.7", "error": None},
    }


def test_torch_names_the_cuda_12_build_for_a_v100_and_an_old_driver():
    from distmis.backends.torch.devices import problems, supports

    assert supports((9, 0), CU13_ARCHS) and supports((8, 9), CU13_ARCHS)  # sm_86 cubin runs
    assert not supports((7, 0), CU13_ARCHS) and supports((7, 0), CU126_ARCHS)
    assert supports((12, 1), ["sm_90", "compute_120"])  # PTX, compiled by the driver
    assert problems(torch_facts([H100]), expected_gpus=1, driver="580.65.06") == []
    (v100,) = problems(torch_facts([V100]), expected_gpus=1, driver="580.65.06")
    assert "compute capability 7.0" in v100 and "train.torch_cuda: cu126" in v100
    assert problems(torch_facts([V100], CU126_ARCHS, "12.6"), expected_gpus=1, driver="550.1") == []
    (old_driver,) = problems(
        torch_facts([], warnings=["The NVIDIA driver on your system is too old"]),
        expected_gpus=1,
        driver="550.127.05",
    )
    assert "driver 550.127.05 is older than the R580" in old_driver and "cu126" in old_driver
    (too_few,) = problems(torch_facts([H100]), expected_gpus=4, driver="580.65.06")
    assert "sees 1 GPU(s), the job expects 4" in too_few and "gres gpu:4" in too_few


def test_tensorflow_names_the_cuda_wheels_when_the_driver_is_there_but_no_gpu_is_seen():
    from distmis.backends.tensorflow.devices import problems

    facts = {
        "framework": "TensorFlow 2.21.0",
        "cuda_build": "12.5.1",
        "cudnn_build": "9",
        "gpus": [],
        "nccl": {"version": None, "error": None},
    }
    (missing_libraries,) = problems(facts, expected_gpus=1, driver="580.65.06")
    assert (
        "tensorflow[and-cuda]" in missing_libraries
        and "envs/train-tensorflow.yaml" in missing_libraries
    )
    (no_driver,) = problems(facts, expected_gpus=1, driver=None)
    assert "GPU node" in no_driver
    gpu = {**H100, "kernel": "InternalError: no kernel image"}
    nccl = {"version": None, "error": "libnccl.so.2: cannot open shared object file"}
    found = problems({**facts, "gpus": [gpu], "nccl": nccl}, expected_gpus=1, driver="580.65.06")
    assert len(found) == 2 and "kernel failed on GPU 0" in found[0] and "NCCL" in found[1]
    assert problems({**facts, "gpus": [H100]}, expected_gpus=1, driver="580.65.06") == []
