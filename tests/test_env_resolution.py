"""What pip installs from each training env on a Linux x86_64 GPU node: one CUDA stack, the one
its framework was built for.

TensorFlow's CUDA 12 wheels and PyTorch 2.13's CUDA 13 wheels cannot share an env (cuDNN's and
NCCL's cu12 and cu13 wheels write the same files), and TensorFlow without its `and-cuda` wheels
finds no CUDA and trains on the CPU without a word. So each env file's pip list is resolved by
pip itself, ``pip install --dry-run --report``, for CPython 3.11 on glibc 2.28 (manylinux_2_28
x86_64 and older tags: RHEL 8 and later), from PyPI alone: this machine's pip configuration
and every ``PIP_*`` variable are dropped. Only metadata is read (PyPI's PEP 658 files, else
HTTP range requests into the wheel: ``fast-deps``); pip runs with a guard that refuses to
download a whole wheel (TensorFlow's and torch's are ~0.5 GB each). Each resolution takes
10-30 s. The cu126 env also needs PyTorch's index, which CI may not reach: its test skips then.
"""

from __future__ import annotations

import ast
import json
import os
import platform
import re
import socket
import struct
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.test_env_rules import env_pip_requirements

ROOT = Path(__file__).resolve().parents[1]
ENVS_DIR = ROOT / "envs"

# The target: glibc 2.28 x86_64 takes every manylinux tag up to 2.28 (pip does not expand a
# given --platform to the older tags itself; NCCL's wheels are manylinux_2_18, for one).
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(28, 4, -1)] + [
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
]
TARGET_MARKERS = {
    "implementation_name": "cpython",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "platform_system": "Linux",
    "python_full_version": "3.11.0",
    "python_version": "3.11",
    "sys_platform": "linux",
}

# pip, refusing to download a wheel whole: a dry run with --report needs its metadata only. (An
# sdist is downloaded to build its metadata, and pip's cache may hold that build as a local wheel:
# requirements.lock has one sdist, connection_pool.)
GUARDED_PIP = """\
import sys
from pip._internal.operations import prepare

def refuse(*args, **kwargs):
    raise SystemExit(f"refused to download {args[0] if args else 'a wheel'} whole: metadata only")

assert hasattr(prepare, "unpack_url"), "pip moved prepare.unpack_url: update the guard"
unpack_url = prepare.unpack_url

def unpack_no_remote_wheel(link, *args, **kwargs):
    if link.is_wheel and not link.is_file:
        refuse(link.filename)
    return unpack_url(link, *args, **kwargs)

prepare.unpack_url = unpack_no_remote_wheel
assert hasattr(prepare.RequirementPreparer, "_complete_partial_requirements")
prepare.RequirementPreparer._complete_partial_requirements = refuse
from pip._internal.cli.main import main
sys.exit(main())
"""


@dataclass(frozen=True)
class Resolution:
    """What pip would install: canonical name → version, and each one's Requires-Dist."""

    versions: dict[str, str]
    requires: dict[str, list[str]]

    @classmethod
    def from_report(cls, report: dict) -> Resolution:
        versions, requires = {}, {}
        for item in report["install"]:
            name = canonicalize_name(item["metadata"]["name"])
            versions[name] = item["metadata"]["version"]
            requires[name] = item["metadata"].get("requires_dist") or []
        return cls(versions, requires)

    def required_by(self, name: str, extras: Iterable[str] = ("",)) -> set[str]:
        """What ``name``'s metadata requires on the target (with ``extras``)."""
        found = set()
        for text in self.requires[name]:
            requirement = Requirement(text)
            marker = requirement.marker
            if marker is None or any(
                marker.evaluate({**TARGET_MARKERS, "extra": extra}) for extra in extras
            ):
                found.add(canonicalize_name(requirement.name))
        return found

    def cuda_major(self, name: str) -> int | None:
        """The CUDA release a package belongs to: NVIDIA's ``-cuNN`` suffix, else (CUDA 13's
        toolkit wheels dropped it) the release of the ``cuda-toolkit`` that names it; None for
        packages of no CUDA release."""
        suffix = re.fullmatch(r"nvidia-.+-cu(\d+)", name)
        if suffix:
            return int(suffix.group(1))
        if name == "cuda-toolkit":
            return int(self.versions[name].split(".")[0])
        if name.startswith("nvidia-") and "cuda-toolkit" in self.versions:
            toolkit = {
                canonicalize_name(Requirement(t).name) for t in self.requires["cuda-toolkit"]
            }
            if name in toolkit:
                return self.cuda_major("cuda-toolkit")
        return None

    def cuda_stacks(self) -> dict[int, set[str]]:
        """CUDA release → the packages of it that would be installed."""
        stacks: dict[int, set[str]] = {}
        for name in self.versions:
            major = self.cuda_major(name)
            if major is not None:
                stacks.setdefault(major, set()).add(name)
        return stacks


def pip_environment() -> dict[str, str]:
    """This environment without pip's settings: no PIP_* variable, no configuration file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull}


def resolve(requirements: list[str], work: Path, *, native: bool = False) -> Resolution:
    """pip's dry-run resolution of ``requirements`` (lines of a requirements file) for the
    target, from PyPI (and any index line among them). ``native``: for this machine instead,
    which may then build an sdist's metadata (pip takes wheels only for another target)."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "requirements.txt").write_text("\n".join(requirements) + "\n")
    report = work / "report.json"
    command = [sys.executable, "-c", GUARDED_PIP, "install", "--dry-run", "--quiet"]
    command += ["--report", str(report), "--ignore-installed", "--use-feature=fast-deps"]
    if not native:
        command += ["--only-binary=:all:", "--python-version", "3.11"]
        command += ["--implementation", "cp", "--abi", "cp311"]
        command += [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    command += ["-r", str(work / "requirements.txt")]
    result = subprocess.run(
        command, capture_output=True, text=True, env=pip_environment(), cwd=work, timeout=300
    )
    assert result.returncode == 0, f"pip could not resolve {requirements}:\n{result.stderr[-3000:]}"
    return Resolution.from_report(json.loads(report.read_text()))


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory):
    """env file stem → its Resolution, each resolved once per test session."""
    done: dict[str, Resolution] = {}

    def get(env: str) -> Resolution:
        if env not in done:
            work = tmp_path_factory.mktemp(env)
            done[env] = resolve(env_pip_requirements(ENVS_DIR / f"{env}.yaml"), work)
        return done[env]

    return get


# --- what the installed TensorFlow was built against --------------------------------------


def elf_runpath(path: Path) -> list[str]:
    """DT_RUNPATH (else DT_RPATH) of a 64-bit little-endian ELF shared library."""
    with path.open("rb") as elf:
        header = elf.read(64)
        assert header[:6] == b"\x7fELF\x02\x01", f"{path} is not a 64-bit little-endian ELF file"
        (section_offset,) = struct.unpack_from("<Q", header, 0x28)
        entry_size, count = struct.unpack_from("<HH", header, 0x3A)
        elf.seek(section_offset)
        table = elf.read(entry_size * count)
        sections = [struct.unpack_from("<IIQQQQIIQQ", table, i * entry_size) for i in range(count)]

        def read(section: tuple) -> bytes:
            elf.seek(section[4])
            return elf.read(section[5])

        (dynamic,) = [s for s in sections if s[1] == 6]  # SHT_DYNAMIC
        strings = read(sections[dynamic[6]])  # its sh_link: .dynstr
        entries = read(dynamic)
        paths = {}
        for i in range(0, len(entries), 16):
            tag, value = struct.unpack_from("<qQ", entries, i)
            if tag in (15, 29):  # DT_RPATH, DT_RUNPATH
                paths[tag] = strings[value : strings.index(b"\0", value)].decode()
    runpath = paths.get(29, paths.get(15, ""))
    return [p for p in runpath.split(":") if p]


@cache
def installed_tensorflow() -> tuple[str, dict, list[str]]:
    """The .venv's TensorFlow: version, build info (tf.sysconfig.get_build_info(), read
    without importing TensorFlow) and the RUNPATH of libtensorflow_framework.so.2."""
    dist = metadata.distribution("tensorflow")
    source = Path(dist.locate_file("tensorflow/python/platform/build_info.py")).read_text()
    call = next(
        node.value
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Assign) and node.targets[0].id == "build_info"
    )
    build_info = dict(ast.literal_eval(call.args[0]))
    runpath = elf_runpath(Path(dist.locate_file("tensorflow/libtensorflow_framework.so.2")))
    return dist.version, build_info, runpath


# RUNPATH folders of libtensorflow_framework.so.2 that TensorFlow's `and-cuda` extra does not
# fill, and why TensorFlow runs without them.
TF_OPTIONAL_FOLDERS = {
    # XLA's NVSHMEM collectives, off unless asked for; TensorFlow loads it only then.
    "nvidia/nvshmem/lib",
    # TensorRT, which this build does not use (build info is_tensorrt_build: False; checked).
    "tensorrt",
}


def runpath_folders(runpath: list[str]) -> set[str]:
    """RUNPATH entries relative to site-packages: ``$ORIGIN/../nvidia/cudnn/lib`` (from
    tensorflow/) and ``$ORIGIN/../../nvidia/cudnn/lib`` (from tensorflow/python/) alike."""
    return {re.sub(r"^\$ORIGIN/(\.\./)+", "", entry) for entry in runpath}


def check_tensorflow_cuda(resolution: Resolution) -> None:
    """``resolution`` holds the CUDA wheels the .venv's TensorFlow looks for, of the CUDA
    release it was built for, and no other CUDA release."""
    version, build_info, runpath = installed_tensorflow()
    assert resolution.versions["tensorflow"] == version, "the .venv's TensorFlow is another one"
    assert build_info["is_cuda_build"] and not build_info["is_tensorrt_build"], build_info
    major = int(build_info["cuda_version"].split(".")[0])
    cuda = resolution.required_by("tensorflow", extras=["and-cuda"]) - resolution.required_by(
        "tensorflow"
    )
    assert cuda, "TensorFlow's metadata names no and-cuda wheels"
    missing = cuda - set(resolution.versions)
    assert not missing, f"TensorFlow's and-cuda wheels missing: {sorted(missing)}"
    assert {resolution.cuda_major(name) for name in cuda} == {major}, sorted(cuda)
    # Every folder TensorFlow loads CUDA libraries from is some wheel's: nvidia/<lib>/lib is
    # NVIDIA's nvidia-<lib>-cu<major> wheel.
    folders = runpath_folders(runpath) - TF_OPTIONAL_FOLDERS
    assert folders, runpath
    for folder in sorted(folders):
        lib = re.fullmatch(r"nvidia/(\w+)/lib", folder)
        assert lib, f"RUNPATH names {folder}: not an NVIDIA wheel's folder"
        wheel = canonicalize_name(f"nvidia-{lib.group(1)}-cu{major}")
        assert wheel in resolution.versions, f"nothing fills {folder} ({wheel})"
    cudnn_major = build_info["cudnn_version"].split(".")[0]
    cudnn = canonicalize_name(f"nvidia-cudnn-cu{major}")
    assert resolution.versions[cudnn].split(".")[0] == cudnn_major
    stacks = resolution.cuda_stacks()
    assert set(stacks) == {major}, {k: sorted(v) for k, v in stacks.items()}


def cuda_tag_major(tag: str) -> int:
    """cu13 → 13, cu126 → 12."""
    return int(tag[2:4])


def check_torch_cuda(resolution: Resolution, tag: str, torch_version: str) -> None:
    """``resolution`` holds torch ``torch_version`` and every CUDA wheel its metadata names,
    all of CUDA release ``tag``, and no other CUDA release."""
    assert resolution.versions["torch"] == torch_version
    major = cuda_tag_major(tag)
    cuda = {
        name
        for name in resolution.required_by("torch")
        if name.startswith(("nvidia-", "cuda-toolkit"))
    }
    assert cuda, "torch's metadata names no CUDA wheels: not a CUDA build"
    assert cuda <= set(resolution.versions), sorted(cuda - set(resolution.versions))
    assert {resolution.cuda_major(name) for name in cuda} == {major}, sorted(cuda)
    stacks = resolution.cuda_stacks()
    assert set(stacks) == {major}, {k: sorted(v) for k, v in stacks.items()}


def lock_requirements() -> list[str]:
    return [
        line.strip()
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def lock_version(name: str) -> str:
    (line,) = [r for r in lock_requirements() if canonicalize_name(r.partition("==")[0]) == name]
    return line.partition("==")[2]


# --- the checks themselves, on hand-made resolutions (fast) --------------------------------


def test_cuda_release_of_a_package_from_its_suffix_or_its_toolkit():
    both = Resolution(
        versions={
            "nvidia-cudnn-cu12": "9.3.0.75",
            "nvidia-cudnn-cu13": "9.20.0.48",
            "cuda-toolkit": "13.0.3.0",
            "nvidia-cublas": "13.1.1.3",
            "nvidia-ml-py": "13.580.82",
            "numpy": "2.4.6",
        },
        requires={
            "cuda-toolkit": ["nvidia-cublas==13.1.1.3.*; extra == 'cublas'"],
            "nvidia-cudnn-cu12": [],
            "nvidia-cudnn-cu13": ["nvidia-cublas"],
        },
    )
    assert both.cuda_major("nvidia-cudnn-cu12") == 12
    assert both.cuda_major("nvidia-cublas") == 13  # named by cuda-toolkit 13
    assert both.cuda_major("nvidia-ml-py") is None and both.cuda_major("numpy") is None
    assert both.cuda_stacks() == {
        12: {"nvidia-cudnn-cu12"},
        13: {"nvidia-cudnn-cu13", "cuda-toolkit", "nvidia-cublas"},
    }


def test_the_installed_tensorflows_runpath_names_nvidias_wheels():
    _version, build_info, runpath = installed_tensorflow()
    folders = runpath_folders(runpath)
    # Read from the library itself: what check_tensorflow_cuda requires is not made up here.
    assert {"nvidia/cudnn/lib", "nvidia/cublas/lib", "nvidia/cuda_runtime/lib"} <= folders
    assert build_info["cuda_version"].startswith("12.")


# --- each env, resolved from PyPI ----------------------------------------------------------


@pytest.mark.slow
def test_tensorflow_env_gets_the_cuda_wheels_tensorflow_was_built_for(resolved):
    resolution = resolved("train-tensorflow")
    check_tensorflow_cuda(resolution)
    assert "torch" not in resolution.versions


@pytest.mark.slow
def test_torch_env_gets_the_cuda_13_wheels_of_pypis_torch(resolved):
    resolution = resolved("train-torch")
    check_torch_cuda(resolution, "cu13", lock_version("torch"))
    assert "tensorflow" not in resolution.versions


# The venvs that "GPU set-up" (docs/how-to/slurm-and-gpus.md) builds without conda:
# requirements.lock as is for torch (or the lock without torch, plus PyTorch's cu126 build), and
# for TensorFlow the lock without torch, plus TensorFlow's and-cuda wheels.
TF_VENV_COMMAND = "grep -v '^torch==' requirements.lock | .venv-tf/bin/pip install -r /dev/stdin"
TORCH_VENV_COMMAND = "grep -v '^torch==' requirements.lock | .venv-torch/bin/pip install"
GPU_SETUP_DOC = ROOT / "docs" / "how-to" / "slurm-and-gpus.md"


def pytorch_index_reachable() -> bool:
    try:
        socket.create_connection(("download.pytorch.org", 443), timeout=10).close()
    except OSError:
        return False
    return True


@pytest.mark.slow
def test_torch_cu126_env_gets_the_cuda_12_wheels_of_pytorchs_build(resolved, tmp_path: Path):
    if not pytorch_index_reachable():
        pytest.skip("download.pytorch.org is not reachable from here (only PyPI is promised)")
    resolution = resolved("train-torch-cu126")
    check_torch_cuda(resolution, "cu126", lock_version("torch") + "+cu126")
    assert "tensorflow" not in resolution.versions
    # "GPU set-up"'s torch venv of that build, without conda.
    (index,) = [r for r in env_pip_requirements(ENVS_DIR / "train-torch-cu126.yaml") if r[0] == "-"]
    torch = f"torch=={lock_version('torch')}+cu126"
    doc = GPU_SETUP_DOC.read_text()
    assert f"{TORCH_VENV_COMMAND} {index} -r /dev/stdin '{torch}'" in doc
    if native_is_the_target():  # as in test_readmes_gpu_venvs_each_get_one_cuda_stack
        without_torch = [r for r in lock_requirements() if not r.startswith("torch==")]
        venv = resolve([index, *without_torch, torch], tmp_path / "venv", native=True)
        check_torch_cuda(venv, "cu126", lock_version("torch") + "+cu126")


def native_is_the_target() -> bool:
    """Whether this machine is a Linux x86_64 CPython 3.11 of glibc >= 2.28."""
    libc, version = platform.libc_ver()
    return (
        sys.platform == "linux"
        and platform.machine() == "x86_64"
        and sys.implementation.name == "cpython"
        and sys.version_info[:2] == (3, 11)
        and libc == "glibc"
        and tuple(map(int, version.split("."))) >= (2, 28)
    )


@pytest.mark.slow
@pytest.mark.skipif(not native_is_the_target(), reason="resolves for this machine: not the target")
def test_readmes_gpu_venvs_each_get_one_cuda_stack(tmp_path: Path):
    doc = GPU_SETUP_DOC.read_text()
    tensorflow = f"tensorflow[and-cuda]=={lock_version('tensorflow')}"
    assert f"{TF_VENV_COMMAND} '{tensorflow}'" in doc
    # The lock holds an sdist-only package (connection_pool), which pip takes for this machine
    # only: the venvs are resolved for it.
    without_torch = [r for r in lock_requirements() if not r.startswith("torch==")]
    check_tensorflow_cuda(resolve([*without_torch, tensorflow], tmp_path / "tf", native=True))
    torch = resolve(lock_requirements(), tmp_path / "torch", native=True)
    check_torch_cuda(torch, "cu13", lock_version("torch"))
