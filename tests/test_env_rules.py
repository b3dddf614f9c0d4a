"""Each conda env (envs/*.yaml) holds what its rules import.

Conda cannot run on CI, and pip-installing TensorFlow, PyTorch and Ray once more per env would
take far too long, so each env is rebuilt from the distributions already installed in the
project's .venv: a bare venv (no pip, no system site-packages) whose site-packages holds
symlinks to exactly the distributions the env file's pip list names plus the dependency
closure pip would install for them (``Requires-Dist`` with markers and extras evaluated for
this interpreter). distmis itself is not installed there, as in a conda env: rules/common.smk
puts the checkout's src/ on PYTHONPATH.

Snakemake runs a ``script:`` with the Python it runs on (``sys.executable``) unless
``--use-conda`` is given, so each env's rules are run by a Snakemake driver started with that
env's python, with Snakemake's own closure on the driver's path only (in a folder beside the
env, minus what the env already holds). That is the setup of a user who installs snakemake on
its own and runs ``--use-conda``: a job's script sees its env, then (appended by Snakemake's
script preamble, to unpickle the ``snakemake`` object) the driver's path. Stricter than that
setup, an import hook in each env refuses a job any module of Snakemake's folder beyond what a
trivial ``script:`` rule takes from there, so a package the env file lacks fails the job even
when Snakemake happens to depend on it too (PyYAML, jsonschema, requests, ...).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from distmis.config import train_env, validate_config
from distmis.errors import ConfigError
from tests.test_workflow import dry_run_jobs, snakemake, write_config

ROOT = Path(__file__).resolve().parents[1]
ENVS_DIR = ROOT / "envs"
# The project's venv (`make venv`): the only place distributions are taken from.
SITE_PACKAGES = Path(sysconfig.get_paths()["purelib"])


# --- which rule runs in which env ----------------------------------------------------------

RULE_BLOCK = re.compile(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", re.MULTILINE | re.DOTALL)
# A rule's env: a file of envs/, or rules/common.smk's train_conda_env (its {backend}'s env).
BY_BACKEND = "train_conda_env"
CONDA_ENV = re.compile(
    rf'^    conda:\n\s+(?:"\.\./envs/([\w-]+)\.yaml"|({BY_BACKEND}))$', re.MULTILINE
)


def rule_envs(rules_dir: Path = ROOT / "rules") -> dict[str, str]:
    """Each rule of ``rules_dir/*.smk`` → the stem of the env file its ``conda:`` names, or
    BY_BACKEND."""
    found = {}
    for smk in sorted(rules_dir.glob("*.smk")):
        for name, body in RULE_BLOCK.findall(smk.read_text()):
            envs = CONDA_ENV.findall(body)
            assert len(envs) == 1, f"rule {name} in {smk.name} names {len(envs)} conda envs"
            found[name] = envs[0][0] or envs[0][1]
    return found


def env_pip_requirements(env_file: Path) -> list[str]:
    """The pip list of a conda env file, as pip would read it."""
    env = yaml.safe_load(env_file.read_text())
    (pip,) = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    return list(pip)


# The .venv is the development install (`make venv`, CPU): the CUDA 12 wheels of TensorFlow's
# `and-cuda` extra are not there to link, and nothing run here loads them.
GPU_EXTRAS = {"tensorflow": {"and-cuda"}}


def venv_requirements(env_file: Path) -> list[str]:
    """An env file's requirements as the .venv can hold them: without GPU_EXTRAS and pip
    options (an index line)."""
    requirements = []
    for text in env_pip_requirements(env_file):
        if text.startswith("-"):
            continue
        requirement = Requirement(text)
        requirement.extras -= GPU_EXTRAS.get(canonicalize_name(requirement.name), set())
        requirements.append(str(requirement))
    return requirements


def test_train_env_is_the_backends_env_and_torch_cuda_picks_torchs():
    assert train_env({"torch_cuda": "cu13"}, "tensorflow") == "train-tensorflow"
    assert train_env({"torch_cuda": "cu126"}, "tensorflow") == "train-tensorflow"
    assert train_env({"torch_cuda": "cu13"}, "torch") == "train-torch"
    assert train_env({"torch_cuda": "cu126"}, "torch") == "train-torch-cu126"
    with pytest.raises(ConfigError, match="got 'jax'"):
        train_env({"torch_cuda": "cu13"}, "jax")


def test_rules_with_a_backend_take_its_env_and_no_other_rule_does(tmp_path: Path):
    configfile = tmp_path / "config.yaml"
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["train"]["backend"] = ["tensorflow", "torch"]
    configfile.write_text(yaml.safe_dump(config))
    result = snakemake("-n", workdir=tmp_path, configfile=configfile)
    assert result.returncode == 0, result.stderr
    jobs = dry_run_jobs(result.stdout)
    with_backend = {job["rule"] for job in jobs if "backend" in job["wildcards"]}
    training = {"train_data_parallel", "train_experiment_parallel", "train_hybrid_parallel"}
    assert training | {"evaluate"} <= with_backend
    assert {rule for rule, env in rule_envs().items() if env == BY_BACKEND} == with_backend


# Answers the questions Snakemake asks conda before a dry run (version, install prefix, channel
# priority) and refuses anything else: `--list-conda-envs` then lists the env files of every job
# of the DAG, as it would on a login node, without creating one.
FAKE_CONDA = """#!/bin/sh
case "$*" in
  "--version") echo "conda 24.7.1" ;;
  "info --json") printf '{"conda_prefix": "%s", "platform": "linux-64"}\\n' "$(dirname "$0")" ;;
  "config --get channel_priority --json") echo '{"get": {"channel_priority": "strict"}}' ;;
  *) echo "fake conda: refusing '$*'" >&2; exit 1 ;;
esac
"""


def deployed_envs(tmp_path: Path, train: Mapping[str, object]) -> set[str]:
    """Stems of the env files `snakemake --sdm conda --list-conda-envs` lists for config.yaml
    with ``train`` merged over its train section."""
    fake = tmp_path / "fake-conda" / "conda"
    if not fake.exists():
        fake.parent.mkdir()
        fake.write_text(FAKE_CONDA)
        fake.chmod(0o755)
    env = {**os.environ, "PATH": os.pathsep.join([str(fake.parent), os.environ["PATH"]])}
    snakemake_bin = Path(sys.executable).parent / "snakemake"
    command = [str(snakemake_bin), "--snakefile", str(ROOT / "Snakefile"), "--directory"]
    command += [str(tmp_path), "--configfile", str(ROOT / "config.yaml")]
    command += ["--config", f"train={json.dumps(train)}", "--sdm", "conda", "--list-conda-envs"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.split("environment\tcontainer\tlocation\n", 1)[1].splitlines()
    return {Path(line.split("\t")[0]).stem for line in lines}


def test_snakemake_deploys_each_backends_env_for_its_jobs(tmp_path: Path):
    # The config's backends decide which training and evaluation jobs exist, so the envs
    # Snakemake deploys for one backend are its jobs' envs (beside data's and plots').
    others = {"data", "plots"}
    assert deployed_envs(tmp_path, {"backend": "tensorflow"}) == others | {"train-tensorflow"}
    assert deployed_envs(tmp_path, {"backend": "torch"}) == others | {"train-torch"}
    cu126 = {"backend": "torch", "torch_cuda": "cu126"}
    assert deployed_envs(tmp_path, cu126) == others | {"train-torch-cu126"}
    both = {"backend": ["tensorflow", "torch"]}
    assert deployed_envs(tmp_path, both) == others | {"train-tensorflow", "train-torch"}


# --- building a venv of a dependency closure ------------------------------------------------


@dataclass
class _Node:
    """A path of site-packages: the distributions owning a file at or below it."""

    owners: set[str] = field(default_factory=set)
    children: dict[str, _Node] = field(default_factory=dict)


@cache
def installed() -> dict[str, metadata.Distribution]:
    """The .venv's distributions by canonical name."""
    found: dict[str, metadata.Distribution] = {}
    for dist in metadata.distributions(path=[str(SITE_PACKAGES)]):
        found.setdefault(canonicalize_name(dist.metadata["Name"]), dist)
    return found


@cache
def ownership() -> _Node:
    """site-packages as a tree of the files each distribution's RECORD lists."""
    root = _Node()
    for name, dist in installed().items():
        for file in dist.files or []:
            if file.parts[0] == "..":  # console scripts and data outside site-packages
                continue
            node = root
            for part in file.parts:
                node = node.children.setdefault(part, _Node())
                node.owners.add(name)
    return root


def closure(requirements: Iterable[str]) -> dict[str, str]:
    """Canonical name → version of every distribution pip would install for ``requirements``,
    resolved against the .venv (an exact pin must match the version found there)."""
    chosen: dict[str, str] = {}
    extras_done: dict[str, set[str]] = defaultdict(set)
    pending = [(Requirement(text), "the env file") for text in requirements]
    while pending:
        requirement, wanted_by = pending.pop()
        name = canonicalize_name(requirement.name)
        dist = installed().get(name)
        if dist is None:
            raise LookupError(f"{requirement} (wanted by {wanted_by}) is not in {SITE_PACKAGES}")
        if not requirement.specifier.contains(dist.version, prereleases=True):
            raise LookupError(f"{requirement} (wanted by {wanted_by}): .venv has {dist.version}")
        extras = {canonicalize_name(e) for e in requirement.extras}
        new_extras = extras - extras_done[name]
        if name in chosen and not new_extras:
            continue
        evaluate_for = new_extras if name in chosen else {"", *new_extras}
        chosen[name] = dist.version
        extras_done[name] |= extras
        for text in dist.requires or []:
            dependency = Requirement(text)
            marker = dependency.marker
            if marker is None or any(marker.evaluate({"extra": e}) for e in evaluate_for):
                pending.append((dependency, f"{name}=={dist.version}"))
    return chosen


def link_distributions(names: Iterable[str], target: Path) -> None:
    """Symlink into ``target`` every file and folder of site-packages that ``names`` own.

    A folder owned by these distributions only is linked whole; a folder shared with another
    (a top-level ``__pycache__``, a namespace package) is made here and filled file by file.
    """
    wanted = set(names)

    def link(node: _Node, source: Path, dest: Path) -> None:
        for part, child in node.children.items():
            if not child.owners & wanted or not os.path.lexists(source / part):
                continue
            if child.owners <= wanted or not child.children:
                (dest / part).symlink_to(source / part)
            else:
                (dest / part).mkdir()
                link(child, source / part, dest / part)

    target.mkdir(parents=True, exist_ok=True)
    link(ownership(), SITE_PACKAGES, target)


# Installed into every env venv that runs Snakemake (a .pth line runs it at start-up). In
# every process but the driver it watches imports that would be found under
# DISTMIS_ENV_GUARD_DIR (Snakemake's folder, which Snakemake's script preamble appends to a
# job's sys.path), logs them to DISTMIS_ENV_GUARD_LOG as "pid<TAB>module<TAB>argv[0]<TAB>verdict"
# and, when DISTMIS_ENV_GUARD_ALLOW is set, refuses every top-level module not listed there
# with ModuleNotFoundError: a job then has its env and only as much of Snakemake as unpickling
# its `snakemake` object needs. An optional import (try/except ImportError) sees the module
# absent, as it would be in the env alone.
GUARD_MODULE = """\
import os
import sys
import threading
from importlib.machinery import PathFinder

_DIR = os.environ.get("DISTMIS_ENV_GUARD_DIR")
_LOG = os.environ.get("DISTMIS_ENV_GUARD_LOG")
_ALLOW = os.environ.get("DISTMIS_ENV_GUARD_ALLOW")
_ALLOW = None if _ALLOW is None else set(_ALLOW.split(","))


class _EnvGuard:
    _local = threading.local()

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if getattr(cls._local, "busy", False):
            return None
        if os.environ.get("DISTMIS_ENV_GUARD_DRIVER") == str(os.getpid()):
            return None
        cls._local.busy = True
        try:
            spec = PathFinder.find_spec(name, path, target)
        finally:
            cls._local.busy = False
        if spec is None:
            return None
        places = [spec.origin] if spec.origin else list(spec.submodule_search_locations or [])
        if not any(p and p.startswith(_DIR + os.sep) for p in places):
            return None
        refused = _ALLOW is not None and name.partition(".")[0] not in _ALLOW
        with open(_LOG, "a") as log:
            verdict = "refused" if refused else "taken"
            log.write(f"{os.getpid()}\\t{name}\\t{sys.argv[0]}\\t{verdict}\\n")
        if refused:
            raise ModuleNotFoundError(
                f"No module named {name!r} in this env (only Snakemake's own packages have it)",
                name=name,
            )
        return None


if _DIR and _LOG:
    sys.meta_path.insert(0, _EnvGuard)
"""


@dataclass(frozen=True)
class EnvVenv:
    """A venv of one closure, and (for Snakemake runs) Snakemake's closure beside it."""

    root: Path
    distributions: Mapping[str, str]
    snakemake_dir: Path | None = None

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def site_packages(self) -> Path:
        vars_ = {"base": str(self.root), "platbase": str(self.root)}
        return Path(sysconfig.get_path("purelib", "venv", vars=vars_))

    def environ(self) -> dict[str, str]:
        """The environment of a user with this venv activated and nothing else."""
        venv_bin = str(Path(sys.executable).parent)
        dropped = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "SLURM_JOB_ID", "RAY_ADDRESS")
        env = {k: v for k, v in os.environ.items() if k not in dropped}
        path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != venv_bin]
        env.update(
            PATH=os.pathsep.join([str(self.root / "bin"), *path]),
            VIRTUAL_ENV=str(self.root),
            PYTHONNOUSERSITE="1",
            # The linked files are the .venv's own: never write bytecode into it.
            PYTHONDONTWRITEBYTECODE="1",
        )
        return env


def build_venv(requirements: Iterable[str], root: Path, *, with_snakemake: bool = False) -> EnvVenv:
    """A venv at ``root`` holding the closure of ``requirements`` and nothing else; with
    ``with_snakemake``, Snakemake's closure (less what the env holds) in ``root/snakemake``
    for the driver, and the import guard."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, capture_output=True
    )
    dists = closure(requirements)
    venv = EnvVenv(root, dists, root / "snakemake" if with_snakemake else None)
    link_distributions(dists, venv.site_packages)
    if venv.snakemake_dir is not None:
        link_distributions(set(closure(["snakemake"])) - set(dists), venv.snakemake_dir)
        (venv.site_packages / "_distmis_env_guard.py").write_text(GUARD_MODULE)
        (venv.site_packages / "_distmis_env_guard.pth").write_text("import _distmis_env_guard\n")
    print(f"built {root.name}: {len(dists)} distributions in {time.perf_counter() - started:.1f} s")
    return venv


def run_python(venv: EnvVenv, code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(venv.python), "-c", code],
        capture_output=True,
        text=True,
        env={**venv.environ(), **env},
        cwd=venv.root,
    )


# The `snakemake` console script, with Snakemake's folder on the driver's path only.
DRIVER = (
    "import os, sys; os.environ['DISTMIS_ENV_GUARD_DRIVER'] = str(os.getpid()); "
    "sys.path.append({folder!r}); from snakemake.cli import main; "
    "sys.argv[0] = 'snakemake'; sys.exit(main())"
)


@dataclass
class SnakemakeRun:
    result: subprocess.CompletedProcess
    # Top-level module → argv[0] of a job process that took it from Snakemake's folder ...
    taken: dict[str, str]
    # ... or was refused it (allow list set).
    refused: dict[str, str]
    seconds: float

    @property
    def output(self) -> str:
        return self.result.stdout + self.result.stderr


def run_snakemake(
    venv: EnvVenv, *args: str, workdir: Path, allow: Iterable[str] | None = None
) -> SnakemakeRun:
    """Snakemake on ``venv``'s python in ``workdir``. Jobs may take from Snakemake's folder
    only the top-level modules in ``allow`` (None: anything, and the run says what)."""
    assert venv.snakemake_dir is not None
    guard_log = workdir / f".env-guard-{venv.root.name}.tsv"
    guard_log.unlink(missing_ok=True)
    env = venv.environ()
    env.update(DISTMIS_ENV_GUARD_DIR=str(venv.snakemake_dir), DISTMIS_ENV_GUARD_LOG=str(guard_log))
    if allow is not None:
        env["DISTMIS_ENV_GUARD_ALLOW"] = ",".join(sorted(allow))
    command = [str(venv.python), "-c", DRIVER.format(folder=str(venv.snakemake_dir)), *args]
    started = time.perf_counter()
    result = subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=workdir, timeout=900
    )
    seconds = time.perf_counter() - started
    seen: dict[str, dict[str, str]] = {"taken": {}, "refused": {}}
    if guard_log.exists():
        for line in guard_log.read_text().splitlines():
            _pid, module, argv0, verdict = line.split("\t")
            seen[verdict].setdefault(module.partition(".")[0], argv0)
    return SnakemakeRun(result, seen["taken"], seen["refused"], seconds)


# --- fast checks of the builder ---------------------------------------------------------------


def test_closure_follows_markers_and_extras():
    # jsonschema's own dependencies come along; its `format` extra's do not.
    plain = closure(["jsonschema==4.26.0"])
    assert {"jsonschema", "attrs", "referencing", "rpds-py", "jsonschema-specifications"} <= set(
        plain
    )
    assert "idna" not in plain and "webcolors" not in plain
    # ray's `train` extra pulls in tensorboardX and pandas; plain ray does not.
    assert "tensorboardx" not in closure(["ray"])
    assert {"tensorboardx", "pandas", "pyarrow"} <= set(closure(["ray[train]"]))
    with pytest.raises(LookupError, match="has 2.4.6"):
        closure(["numpy==1.0"])
    with pytest.raises(LookupError, match="not in"):
        closure(["no-such-distribution-here"])


def test_a_built_env_imports_its_closure_and_nothing_else(tmp_path: Path):
    data_env = env_pip_requirements(ENVS_DIR / "data.yaml")
    assert not any(canonicalize_name(Requirement(r).name) == "tensorflow" for r in data_env)
    venv = build_venv(data_env, tmp_path / "data")
    assert "tensorflow" not in venv.distributions and "numpy" in venv.distributions
    probe = (
        "import importlib.util as u; "
        "print([m for m in ('numpy', 'nibabel', 'crc32c', 'SimpleITK', 'tensorflow', 'torch', "
        "'ray', 'pytest', 'snakemake', 'distmis') if u.find_spec(m)])"
    )
    result = run_python(venv, probe)
    assert result.returncode == 0, result.stderr
    # What the env names is there; the frameworks, pytest, Snakemake and distmis are not.
    assert result.stdout.strip() == "['numpy', 'nibabel', 'crc32c', 'SimpleITK']"
    result = run_python(venv, "import tensorflow")
    assert "No module named 'tensorflow'" in result.stderr
    # distmis comes as it does in a conda env: the checkout's src/ on PYTHONPATH.
    result = run_python(
        venv,
        "import distmis.prepare.msd, nibabel; print(nibabel.__file__)",
        PYTHONPATH=str(ROOT / "src"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(str(venv.site_packages)), result.stdout
    # A reduced spec: what it leaves out is gone.
    small = build_venv(["PyYAML"], tmp_path / "small")
    assert set(small.distributions) == {"pyyaml"}
    assert run_python(small, "import yaml").returncode == 0
    assert "No module named 'numpy'" in run_python(small, "import numpy").stderr


# --- every rule through Snakemake in its own env ---------------------------------------------

BACKENDS = ("tensorflow", "torch")
MODES = ("data", "experiment")
# Every rule in pipeline order with the files that make Snakemake run it; consecutive rules of
# one env run in one Snakemake call restricted to them (--allowed-rules), and consecutive rules
# of BY_BACKEND env in one call per backend, in its env, for that backend's files.
RULE_TARGETS: dict[str, list[str]] = {
    "synthesize_brats": ["results/data/synthetic/Task01_BrainTumour"],
    "download_brats": ["results/data/msd/Task01_BrainTumour"],
    "plan_tfrecords": ["results/tfrecords/plan.json"],
    "convert_tfrecords": [],  # wildcards: run for index_tfrecords's inputs
    "index_tfrecords": ["results/tfrecords/info.json"],
    "preflight": [f"results/preflight/{b}.json" for b in BACKENDS],
    "train_data_parallel": [f"results/train/{b}/data/1gpu/summary.json" for b in BACKENDS],
    "train_experiment_parallel": [
        f"results/train/{b}/experiment/1gpu/summary.json" for b in BACKENDS
    ],
    # Not run here (NOT_RUN): its job imports what train_experiment_parallel's and
    # train_data_parallel's do (Tune driving Ray Train), in the same env, asserted below. A
    # hybrid run here once left an orphaned ray::TrainController process behind, which the
    # SLURM tests (next in collection order) count as a leftover Ray process.
    "train_hybrid_parallel": [],
    "evaluate": [f"results/evaluate/{b}/{m}/summary.json" for b in BACKENDS for m in MODES],
    "scaling": ["results/scaling/scaling.csv"],
    "plot_scaling": ["plot_scaling"],
    "plan": ["plan"],
}


NOT_RUN = {"train_hybrid_parallel"}


def stages(
    envs: Mapping[str, str], train: Mapping[str, object]
) -> list[tuple[str, list[str], list[str]]]:
    """(env, its rules, their targets) for each Snakemake call: a run of consecutive rules of
    RULE_TARGETS in one env, or of BY_BACKEND rules once per backend in that backend's env."""
    grouped: list[tuple[str, list[str]]] = []
    for rule in RULE_TARGETS:
        if grouped and grouped[-1][0] == envs[rule]:
            grouped[-1][1].append(rule)
        else:
            grouped.append((envs[rule], [rule]))
    calls = []
    for env, rules in grouped:
        targets = [target for rule in rules for target in RULE_TARGETS[rule]]
        if env != BY_BACKEND:
            calls.append((env, rules, targets))
            continue
        for backend in BACKENDS:
            mine = [target for target in targets if f"/{backend}/" in target]
            calls.append((train_env(train, backend), rules, mine))
    return calls


def msd_archive(task: Path, archive: Path) -> Path:
    """``task`` (a Task01_BrainTumour folder) packed as the MSD tar is."""
    with tarfile.open(archive, "w") as tar:
        tar.add(task, arcname=task.name)
    return archive


@pytest.fixture(scope="session")
def preamble_modules(tmp_path_factory: pytest.TempPathFactory) -> frozenset[str]:
    """The top-level modules a do-nothing ``script:`` job takes from Snakemake's folder: what
    Snakemake's preamble needs to unpickle the ``snakemake`` object, which every conda job gets
    from the driver's path too. Measured in an empty env, where it takes the most."""
    root = tmp_path_factory.mktemp("preamble")
    venv = build_venv([], root / "empty", with_snakemake=True)
    work = root / "work"
    work.mkdir()
    (work / "job.py").write_text("open(snakemake.output[0], 'w').write(snakemake.params.x)\n")
    (work / "Snakefile").write_text(
        "rule trivial:\n"
        "    input: 'in.txt'\n"
        "    output: 'out/{name}.txt'\n"
        "    log: 'logs/{name}.log'\n"
        "    params: x='done'\n"
        "    threads: 1\n"
        "    resources: runtime=1\n"
        "    script: 'job.py'\n"
    )
    (work / "in.txt").write_text("")
    run = run_snakemake(venv, "--cores", "1", "out/a.txt", workdir=work)
    assert run.result.returncode == 0, run.output[-3000:]
    assert (work / "out/a.txt").read_text() == "done"
    assert "snakemake" in run.taken, run.taken  # the guard saw the job's imports
    return frozenset(run.taken)


def test_a_job_gets_its_env_and_only_the_preamble_from_snakemake(tmp_path, preamble_modules):
    # tabulate is a Snakemake dependency that the preamble does not load: a job of an env
    # without it is refused it, and an optional import of it finds it absent.
    assert "tabulate" not in preamble_modules and "numpy" not in preamble_modules
    venv = build_venv(["numpy"], tmp_path / "numpy-only", with_snakemake=True)
    work = tmp_path / "work"
    work.mkdir()
    (work / "optional.py").write_text(
        "import numpy\n"
        "try:\n"
        "    import tabulate\n"
        "except ImportError:\n"
        "    tabulate = None\n"
        "open(snakemake.output[0], 'w').write('absent' if tabulate is None else 'present')\n"
    )
    (work / "needs.py").write_text("import numpy, tabulate\nopen(snakemake.output[0], 'w')\n")
    (work / "Snakefile").write_text(
        "rule all:\n    input: 'optional.txt', 'needs.txt'\n"
        "rule optional:\n    output: 'optional.txt'\n    script: 'optional.py'\n"
        "rule needs:\n    output: 'needs.txt'\n    script: 'needs.py'\n"
    )
    run = run_snakemake(venv, "--cores", "1", "--keep-going", workdir=work, allow=preamble_modules)
    assert run.result.returncode != 0
    assert "No module named 'tabulate' in this env" in run.output, run.output[-3000:]
    assert (work / "optional.txt").read_text() == "absent"
    assert not (work / "needs.txt").exists()
    assert set(run.refused) == {"tabulate"}, run.refused
    assert set(run.taken) <= preamble_modules


@pytest.mark.slow
def test_every_rule_runs_in_its_own_env_alone(tmp_path: Path, make_task, preamble_modules):
    envs = rule_envs()
    assert set(RULE_TARGETS) == set(envs), "add the new rule to RULE_TARGETS"
    assert envs["train_hybrid_parallel"] == envs["train_experiment_parallel"] == BY_BACKEND

    workdir = tmp_path / "work"
    workdir.mkdir()
    configfile = write_config(workdir / "config.yaml")
    config = yaml.safe_load(configfile.read_text())
    # The download rule too, from a local archive (no network): source msd.
    archive = msd_archive(make_task(cases=10), tmp_path / "Task01_BrainTumour.tar")
    config["data"]["source"] = "msd"
    config["data"]["download"].update(archive=str(archive), md5=None)
    # Both backends and both modes, at one G: every import path of the training rules.
    config["train"].update(backend=list(BACKENDS), modes=list(MODES), gpu_counts=[1])
    configfile.write_text(yaml.safe_dump(config))
    train = validate_config(yaml.safe_load(configfile.read_text()))["train"]

    calls = stages(envs, train)
    started = time.perf_counter()
    venvs = {
        env: build_venv(
            venv_requirements(ENVS_DIR / f"{env}.yaml"),
            tmp_path / "venvs" / env,
            with_snakemake=True,
        )
        for env in sorted({env for env, _, _ in calls})
    }
    timings = {"build venvs": time.perf_counter() - started}
    # A backend's env holds its framework only; a job that imports the other one fails here.
    assert "torch" not in venvs["train-tensorflow"].distributions
    assert "tensorflow" not in venvs["train-torch"].distributions

    for env, rules, targets in calls:
        run = run_snakemake(
            venvs[env],
            "--snakefile",
            str(ROOT / "Snakefile"),
            "--directory",
            str(workdir),
            "--configfile",
            str(configfile),
            "--cores",
            "2",
            "--allowed-rules",
            *rules,
            "--",
            *targets,
            workdir=workdir,
            allow=preamble_modules,
        )
        timings[env] = timings.get(env, 0.0) + run.seconds
        logs = "".join(
            f"\n--- {p.relative_to(workdir)}\n{p.read_text()[-2000:]}"
            for p in sorted((workdir / "logs").rglob("*.log"))
            if p.stat().st_mtime > time.time() - run.seconds - 1
        )
        assert run.result.returncode == 0, (
            f"rules {rules} failed in envs/{env}.yaml alone (imports refused because only "
            f"Snakemake's packages have them, optional ones included: {run.refused})\n"
            f"{run.output[-3000:]}{logs}"
        )
        ran = {job["rule"] for job in dry_run_jobs(run.output)}
        assert ran == set(rules) - NOT_RUN, (env, ran)
        assert set(run.taken) <= preamble_modules, run.taken
        if run.refused:  # optional imports the env goes without; worth a look, not an error
            print(f"envs/{env}.yaml: optional imports absent: {sorted(run.refused)}")
    print("seconds:", json.dumps({k: round(v, 1) for k, v in timings.items()}))
    for backend in BACKENDS:
        for mode in MODES:
            evaluated = workdir / f"results/evaluate/{backend}/{mode}/summary.json"
            assert json.loads(evaluated.read_text())["cases"] > 0
    assert (workdir / "results/plot_scaling/speedup.png").stat().st_size > 0
    assert (workdir / "results/plan/plan.png").stat().st_size > 0
