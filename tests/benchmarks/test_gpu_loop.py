"""benchmarks/gpu_loop.py: the carry check, the restricted site, and the CPU dry run of the
whole script importing only what the GPU machine has."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))  # as `python benchmarks/gpu_loop.py` runs
    try:
        yield importlib.import_module("gpu_loop")
    finally:
        sys.path.remove(str(BENCHMARKS))


def fake_wheel(folder: Path, name: str, version: str, requires: list[str], tag="py3-none-any"):
    path = folder / f"{name}-{version}-{tag}.whl"
    metadata = "\n".join(
        ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
        + [f"Requires-Dist: {r}" for r in requires]
    )
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}-{version}.dist-info/METADATA", metadata + "\n")
    return path


def test_carry_check_names_what_is_neither_there_nor_carried(bench, tmp_path: Path):
    device = tmp_path / "device.txt"
    device.write_text("# machine\nnumpy\nPyYAML\n")
    wheels = tmp_path / "whl"
    wheels.mkdir()
    fake_wheel(wheels, "nibabel", "5.4.2", [
        "numpy>=1.25",
        "importlib-resources>=5.12; python_version < '3.12'",  # not for the machine's 3.12
        "packaging>=20",  # neither there nor carried
        "pydicom; extra == 'dicom'",  # an extra nobody asked for
    ])  # fmt: skip
    fake_wheel(wheels, "jsonschema", "4.26.0", ["referencing>=0.28", "pyyaml"])
    fake_wheel(wheels, "referencing", "0.37.0", [])
    fake_wheel(wheels, "referencing", "0.36.0", [])
    fake_wheel(wheels, "fastlib", "1.0", [], tag="cp311-cp311-macosx_11_0_arm64")
    problems = bench.check_carry(wheels, device)
    assert any("needs packaging>=20" in p for p in problems), problems
    assert any("two versions of referencing" in p for p in problems), problems
    assert any("fastlib" in p and "3.12" in p for p in problems), problems
    assert any("fastlib" in p and "Linux" in p for p in problems), problems
    assert not any("importlib" in p or "pydicom" in p or "yaml" in p.lower() for p in problems)
    assert bench.check_carry(tmp_path / "none", device) == [
        f"no wheels in {tmp_path / 'none'} (benchmarks/gpu_loop.sh --fetch-wheels)"
    ]


def test_the_committed_lists_name_what_the_script_needs(bench):
    device = bench.read_names(BENCHMARKS / "device_packages.txt")
    carried = bench.read_names(BENCHMARKS / "gpu_carry.txt")
    assert {"torch", "numpy", "pyyaml", "tqdm", "psutil", "packaging"} <= device
    assert {"nibabel", "crc32c", "jsonschema"} <= carried
    assert not {"ray", "tensorflow", "simpleitk"} & (device | carried)


def test_restricted_site_hides_every_other_distribution(bench, tmp_path: Path):
    site = bench.restricted_site({"numpy", "pyyaml"}, tmp_path / "site")
    probe = (
        "import importlib.util, json; "
        "print(json.dumps({m: importlib.util.find_spec(m) is not None "
        "for m in ('numpy', 'yaml', 'torch', 'ray', 'distmis', 'json')}))"
    )
    done = subprocess.run(
        [sys.executable, "-S", "-c", probe],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT / "src")])},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen == {
        "numpy": True,
        "yaml": True,
        "torch": False,
        "ray": False,
        "distmis": True,
        "json": True,
    }


@pytest.mark.slow
def test_cpu_dry_run_runs_every_step_with_only_the_machines_packages(tmp_path: Path):
    out = tmp_path / "gpu_loop.json"
    command = [
        sys.executable, str(BENCHMARKS / "gpu_loop.py"), "--device", "cpu", "--small",
        "--cases", "8", "--epochs", "3", "--skip-epochs", "1", "--bare-steps", "2",
        "--cores", "2", "--loops", "float16:cached", "float32:streaming",
        "--allow-only", str(BENCHMARKS / "device_packages.txt"),
        "--allow-only", str(BENCHMARKS / "gpu_carry.txt"),
        "--workdir", str(tmp_path / "work"), "--json", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "restricted to" in done.stdout and "a CPU dry run" in done.stdout
    report = json.loads(out.read_text())
    assert report["bare"]["volumes_per_s"] > 0
    loops = {r["loop"]: r for r in report["loops"]}
    assert set(loops) == {"float16:cached", "float32:streaming"}
    for result in loops.values():
        assert result["status"] == "ok" and result["train_vol_s"] > 0
        # 6 training records of 8 cases at batch 2: 3 steps every epoch, each one timed.
        assert [e["steps"] for e in result["epochs"]] == [3, 3, 3]
        assert 0 <= result["input_wait_share"] < 1 and 0 < result["gpu_share"] <= 1
        assert result["trainer_peak_rss_gb"] > 0
