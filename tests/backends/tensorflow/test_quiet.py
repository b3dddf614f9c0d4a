"""A green CPU run logs no error: TensorFlow's CUDA probe stays off when ``use_gpu`` is false
(or no CUDA driver is there to probe), while TensorFlow's own logging level stays as it was.

Before, every TensorFlow process of a CPU run printed ``E0000 ... cuda_platform.cc:52] failed
call to cuInit: ... UNKNOWN ERROR (303)`` when it first listed its devices (the local runner:
as its trial started).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distmis.backends.tensorflow import BACKEND, CPU_ONLY_ENV, WORKER_ENV, hide_gpus_if_cpu_only
from distmis.train import runtime
from tests.conftest import synthetic_tfrecords

REPO = Path(__file__).resolve().parents[3]
DEVICE_TYPES = "TF_ENABLED_DEVICE_TYPES"
CUDA_PROBE_ERROR = re.compile(r"cuInit|^E\d{4} ", re.MULTILINE)
TF_INFO_LINE = re.compile(r"^I\d{4} ", re.MULTILINE)


def _child_env(tmp_path: Path) -> dict[str, str]:
    """This environment for a fresh process that decides its devices itself, with TensorFlow
    logging everything (INFO up): if its INFO lines get through, its errors do too."""
    env = {k: v for k, v in os.environ.items() if k != DEVICE_TYPES}
    return {
        **env,
        "PYTHONPATH": str(REPO / "src"),
        "TF_CPP_MIN_LOG_LEVEL": "0",
        "DISTMIS_CACHE_DIR": str(tmp_path / "cache"),
    }


def _distmis(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", "import sys; from distmis.cli import main; sys.exit(main())"]
    return subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_cpu_training_and_its_evaluation_log_no_cuda_probe_error(tmp_path):
    data = synthetic_tfrecords(tmp_path / "data", cases=6, seed=5)
    config = tmp_path / "config.yaml"
    grid = {"lr": [0.01], "norm": ["batch"], "beta_2": [0.999], "amsgrad": [False]}
    train = {"backend": "tensorflow", "epochs": 1, "use_gpu": False, "search_space": grid}
    config.write_text(yaml.safe_dump({"train": train}))
    env, out = _child_env(tmp_path), tmp_path / "train"
    trained = _distmis(
        ["train", "--runner", "local", "--mode", "experiment", "--config", str(config)]
        + ["--data", str(data), "--out", str(out)],
        env,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert json.loads(trained.stdout.splitlines()[-1])["failed_count"] == 0
    evaluated = _distmis(
        ["evaluate", "--model", str(out / "best_model.json"), "--data", str(data)]
        + ["--out", str(tmp_path / "evaluate"), "--overlay-cases", "0"],
        env,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    for done in (trained, evaluated):
        assert not CUDA_PROBE_ERROR.findall(done.stderr), done.stderr[-3000:]
        assert TF_INFO_LINE.search(done.stderr), "TensorFlow's own logging was turned down"


def test_a_cpu_only_run_hides_gpus_from_tensorflow_and_its_workers_for_its_duration(
    monkeypatch,
):
    monkeypatch.delenv(DEVICE_TYPES, raising=False)
    with hide_gpus_if_cpu_only(False):
        assert os.environ[DEVICE_TYPES] == "CPU"
        workers = {**runtime.WORKER_ENV, **BACKEND.worker_env}
        assert workers == {**runtime.WORKER_ENV, **WORKER_ENV, **CPU_ONLY_ENV}
        # TensorFlow still logs errors (level 2 drops INFO and WARNING only).
        assert int(workers["TF_CPP_MIN_LOG_LEVEL"]) <= 2
    # Later processes (a GPU run's preflight, its workers) see the GPUs again.
    assert DEVICE_TYPES not in os.environ and BACKEND.worker_env == WORKER_ENV


def test_a_gpu_run_and_a_value_already_set_are_left_alone(monkeypatch):
    monkeypatch.delenv(DEVICE_TYPES, raising=False)
    with hide_gpus_if_cpu_only(True):
        assert DEVICE_TYPES not in os.environ and BACKEND.worker_env == WORKER_ENV
    monkeypatch.setenv(DEVICE_TYPES, "CPU,GPU")
    with hide_gpus_if_cpu_only(False):
        assert os.environ[DEVICE_TYPES] == "CPU,GPU"
        assert BACKEND.worker_env[DEVICE_TYPES] == "CPU,GPU"
    assert os.environ[DEVICE_TYPES] == "CPU,GPU"


@pytest.mark.parametrize("preset", [None, "CPU,GPU"])
def test_importing_the_backend_hides_gpus_only_when_no_cuda_driver_loads(tmp_path, preset):
    script = (
        "import ctypes, json, os\n"
        "import distmis.backends.tensorflow\n"
        "try:\n"
        "    ctypes.CDLL('libcuda.so.1'); driver = True\n"
        "except OSError:\n"
        "    driver = False\n"
        f"print(json.dumps([driver, os.environ.get({DEVICE_TYPES!r})]))\n"
    )
    env = _child_env(tmp_path)
    if preset is not None:
        env[DEVICE_TYPES] = preset
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    driver, device_types = json.loads(done.stdout)
    expected = preset if preset is not None else (None if driver else "CPU")
    assert device_types == expected
