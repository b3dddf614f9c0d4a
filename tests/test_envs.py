"""envs/*.yaml must pin exactly the versions in requirements.lock."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

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


ENV_FILES = sorted((ROOT / "envs").glob("*.yaml"))


def test_every_rule_env_exists_and_every_env_is_used():
    used = set()
    for rules in (ROOT / "rules").glob("*.smk"):
        used |= set(re.findall(r'conda:\s*\n\s*"\.\./envs/([\w-]+)\.yaml"', rules.read_text()))
    assert used, "no rule names a conda env"
    assert used == {p.stem for p in ENV_FILES}


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.name)
def test_env_pins_equal_lock(env_file: Path):
    lock = lock_pins()
    env = yaml.safe_load(env_file.read_text())
    pip_entries = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert pip_entries, f"{env_file.name} pins nothing"
    for entry in pip_entries:
        name, _, version = entry.partition("==")
        assert version, f"{env_file.name}: {entry!r} is not pinned with =="
        key = _normalise(name.split("[")[0])
        assert key in lock, f"{env_file.name}: {name} is not in requirements.lock"
        assert lock[key] == version, f"{env_file.name}: {name}=={version}, lock has {lock[key]}"
    assert "python=3.11" in env["dependencies"]


def test_train_env_holds_both_backends():
    # Rules train_* and evaluate run either backend from envs/train.yaml.
    env = yaml.safe_load((ROOT / "envs" / "train.yaml").read_text())
    pip_entries = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    names = {_normalise(entry.partition("==")[0].split("[")[0]) for entry in pip_entries}
    assert {"tensorflow", "tf-keras", "torch", "crc32c", "ray"} <= names, sorted(names)
