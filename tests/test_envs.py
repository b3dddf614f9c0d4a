"""envs/*.yaml must pin exactly the versions in requirements.lock, and every env must be used."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from distmis.backends import NAMES
from distmis.config import load_schema, train_env

ROOT = Path(__file__).resolve().parents[1]


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[_normalise(name.split("[")[0])] = version
    return pins


def pip_entries(env_file: Path) -> list[str]:
    env = yaml.safe_load(env_file.read_text())
    (pip,) = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    return list(pip)


ENV_FILES = sorted((ROOT / "envs").glob("*.yaml"))
# The one index an env may add to PyPI: PyTorch's, for its builds of torch for one CUDA release
# (`--extra-index-url https://download.pytorch.org/whl/cu126`), which carry that tag as their
# local version (torch==2.13.0+cu126). Only torch may be taken from there.
PYTORCH_INDEX = re.compile(r"--extra-index-url https://download\.pytorch\.org/whl/(cu\d+)")
FROM_PYTORCH_INDEX = {"torch"}


def torch_cuda_choices() -> list[str]:
    return load_schema()["properties"]["train"]["properties"]["torch_cuda"]["enum"]


def test_every_rule_env_exists_and_every_env_is_used():
    used = set()
    for rules in (ROOT / "rules").glob("*.smk"):
        used |= set(re.findall(r'conda:\s*\n\s*"\.\./envs/([\w-]+)\.yaml"', rules.read_text()))
    assert used, "no rule names a conda env"
    # Training and evaluation rules take their backend's env (rules/common.smk train_conda_env).
    by_backend = {
        train_env({"torch_cuda": cuda}, backend)
        for backend in NAMES
        for cuda in torch_cuda_choices()
    }
    assert by_backend == {"train-tensorflow", "train-torch", "train-torch-cu126"}
    assert used | by_backend == {p.stem for p in ENV_FILES}


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.name)
def test_env_pins_equal_lock(env_file: Path):
    lock = lock_pins()
    entries = pip_entries(env_file)
    assert entries, f"{env_file.name} pins nothing"
    indexes = [PYTORCH_INDEX.fullmatch(e) for e in entries if e.startswith("-")]
    assert all(indexes), f"{env_file.name}: an option other than PyTorch's index: {entries}"
    local = {m.group(1) for m in indexes}
    assert len(local) <= 1, f"{env_file.name} names several PyTorch indexes: {sorted(local)}"
    for entry in entries:
        if entry.startswith("-"):
            continue
        name, _, version = entry.partition("==")
        assert version, f"{env_file.name}: {entry!r} is not pinned with =="
        key = _normalise(name.split("[")[0])
        assert key in lock, f"{env_file.name}: {name} is not in requirements.lock"
        if key in FROM_PYTORCH_INDEX and local:
            # PyTorch's build for the index's CUDA release: the lock's version, that tag added.
            (tag,) = local
            assert version == f"{lock[key]}+{tag}", f"{env_file.name}: {entry}, lock {lock[key]}"
        else:
            assert lock[key] == version, f"{env_file.name}: {name}=={version}, lock has {lock[key]}"
    env = yaml.safe_load(env_file.read_text())
    assert "python=3.11" in env["dependencies"]


def names(env_file: Path) -> set[str]:
    return {
        _normalise(entry.partition("==")[0].split("[")[0])
        for entry in pip_entries(env_file)
        if not entry.startswith("-")
    }


def test_each_train_env_holds_one_backend():
    # TensorFlow's CUDA 12 wheels and PyTorch's CUDA 13 wheels write the same files: one env per
    # backend (tests/test_env_resolution.py resolves them).
    shared = {"crc32c", "ray", "tensorboard", "nibabel", "simpleitk", "scipy", "matplotlib"}
    tensorflow = names(ROOT / "envs" / "train-tensorflow.yaml")
    assert {"tensorflow", "tf-keras"} | shared <= tensorflow
    assert "torch" not in tensorflow
    assert "tensorflow[and-cuda]==2.21.0" in pip_entries(ROOT / "envs" / "train-tensorflow.yaml")
    for env in ("train-torch", "train-torch-cu126"):
        torch = names(ROOT / "envs" / f"{env}.yaml")
        assert {"torch"} | shared <= torch, env
        assert not {"tensorflow", "tf-keras"} & torch, env


def test_torch_cu126_env_is_the_torch_env_from_pytorchs_index():
    # Line for line envs/train-torch.yaml, with PyTorch's index first and its torch build.
    cu13 = pip_entries(ROOT / "envs" / "train-torch.yaml")
    cu126 = pip_entries(ROOT / "envs" / "train-torch-cu126.yaml")
    expected = [
        "--extra-index-url https://download.pytorch.org/whl/cu126",
        *(entry + "+cu126" if entry.startswith("torch==") else entry for entry in cu13),
    ]
    assert cu126 == expected
