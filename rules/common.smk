# Config validation (once, before any job) and the small helpers the rules share.
import os
import sys

from snakemake.utils import validate

# The workflow imports its own library from the checkout, installed or not.
sys.path.insert(0, os.path.join(workflow.basedir, "src"))

from distmis import modes
from distmis.backends import NAMES as BACKEND_NAMES
from distmis.cluster.memory import (
    SplitSizes,
    conversion_memory,
    evaluation_memory,
    training_memory,
)
from distmis.cluster.resources import job_shape
from distmis.config import (
    check_semantics,
    plannable,
    resolve_shards,
    run_folders,
    schema_path,
    train_backends,
    train_env,
)
from distmis.prepare.split import SPLITS, shard_filename
from distmis.errors import ConfigError

validate(config, str(schema_path()), set_default=True)
try:
    check_semantics(config)
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None
# `auto` shard counts become numbers here, before any rule asks how many shards there are.
resolve_shards(config)

# Jobs run `python -m distmis.cli` or import distmis from workflow_scripts/; putting the
# checkout's src/ on PYTHONPATH makes that work inside the per-rule conda envs too, where
# the package is not installed (local and SLURM jobs inherit this environment).
# `snakemake --lint` flags this as an env var "used but not asserted with envvars": we set
# it, we do not require the user to, so an `envvars:` assertion would be wrong here.
SRC_DIR = os.path.join(workflow.basedir, "src")
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (SRC_DIR, os.environ.get("PYTHONPATH", "")) if p
)

DATA = config["data"]
PREPROCESS = DATA["preprocess"]
SOURCE_DIR = f"results/data/{DATA['source']}"
TASK_DIR = f"{SOURCE_DIR}/Task01_BrainTumour"


def shard_names():
    """Every shard file the conversion writes, as fixed by config (split, count, compression)."""
    return [
        shard_filename(
            split, index, PREPROCESS["shards"][split], PREPROCESS["compression"]
        )
        for split in SPLITS
        for index in range(PREPROCESS["shards"][split])
    ]


TRAIN = config["train"]
# train.backend is one name or a list; every (mode, G) is trained with each.
BACKENDS = train_backends(TRAIN)
# Wall-clock limit asked of a scheduler for one training job; generous for the grid.
TRAIN_RUNTIME_MINUTES = 24 * 60


# The backends' names: a path segment can never be taken for another wildcard.
wildcard_constraints:
    backend="|".join(BACKEND_NAMES),


# {mode folder: [G, ...]}: data and experiment at every G, hybrid{k} where k divides G.
RUN_FOLDERS = run_folders(TRAIN)


def train_outputs():
    """summary.json of every (backend, mode folder, G) the config asks for."""
    return [
        f"results/train/{backend}/{folder}/{gpus}gpu/summary.json"
        for backend in BACKENDS
        for folder, gpu_counts in RUN_FOLDERS.items()
        for gpus in gpu_counts
    ]


# Keys that only decide which training jobs exist (or, torch_cuda, which env runs them); a job's
# own settings exclude them, so adding a backend, a G or a mode does not make Snakemake rerun the
# jobs already done ("Params have changed"). The job's backend comes from its wildcard.
JOB_SELECTING_KEYS = ("backend", "gpu_counts", "modes", "gpus_per_trial", "torch_cuda")


def train_conda_env(wildcards):
    """The conda env of a training or evaluation job: its {backend}'s (docs/how-to/slurm-and-gpus.md "GPU set-up")."""
    return f"../envs/{train_env(TRAIN, wildcards.backend)}.yaml"


def train_params(wildcards):
    """The validated train section as one training job needs it."""
    own = {k: v for k, v in TRAIN.items() if k not in JOB_SELECTING_KEYS}
    return {**own, "backend": wildcards.backend}


# Rule plan calibrates on a one-worker run; a config without one (only data mode at G > 1,
# only hybrid) has nothing to plan from, so `rule all` leaves the rule out.
PLANNED = plannable(TRAIN)


def eval_outputs():
    """summary.json of the evaluation of every (backend, mode folder) the config asks for."""
    return expand(
        "results/evaluate/{backend}/{mode}/summary.json",
        backend=BACKENDS,
        mode=list(RUN_FOLDERS),
    )


def eval_gpus(mode_folder):
    """The largest G a mode folder (data, experiment, hybrid{k}) was trained on."""
    return max(RUN_FOLDERS[mode_folder])


def _shape(wildcards):
    return job_shape(
        int(wildcards.gpus),
        TRAIN["gpus_per_node"],
        TRAIN["cpus_per_worker"],
        TRAIN["use_gpu"],
    )


def training_threads(wildcards):
    """Locally, every core Snakemake was given, so two timed jobs never overlap; on a cluster
    (no --cores: each job has its own allocation), the CPUs of one node of the job."""
    # `workflow.cores` raises when --cores is unset (cluster runs, --report); read the setting.
    cores = workflow._cores
    return cores if cores else _shape(wildcards).cpus_per_node


def split_sizes(info_json):
    """The converted data's sizes from info.json; before the conversion has run (a dry run of
    a fresh checkout), what the config says it will write. Snakemake sizes a job again when
    it submits it, so a submitted job always has info.json's."""
    if os.path.exists(info_json):
        return SplitSizes.from_info(info_json)
    return SplitSizes.from_config(config)


def train_resources(mode):
    """What a training job of ``mode`` for G GPUs asks a scheduler for (profiles/slurm maps
    these onto sbatch): ceil(G / gpus_per_node) nodes, one task per node holding that node's
    workers' CPUs, GPUs per node as GRES, and memory per node from the data and the config
    (distmis.cluster.memory; the formula is printed in the job's log, `--set-resources
    RULE:mem_mb=N` overrides it). GRES rather than the `gpu` resource, which the SLURM plugin
    turns into a job-wide --gpus=G that SLURM may spread unevenly over the nodes."""

    def mem_mb(wildcards, input):
        k = int(wildcards.k) if modes.get(mode).takes_k else None
        request = training_memory(
            wildcards.backend, mode, int(wildcards.gpus), k, TRAIN, split_sizes(input.info)
        )
        return request.mem_mb

    return {
        "nodes": lambda wildcards: _shape(wildcards).nodes,
        "tasks": lambda wildcards: _shape(wildcards).nodes,
        "cpus_per_task": lambda wildcards: _shape(wildcards).cpus_per_node,
        "gres": lambda wildcards: (
            f"gpu:{_shape(wildcards).gpus_per_node}" if TRAIN["use_gpu"] else ""
        ),
        # Keeps the plugin from adding --ntasks-per-gpu for GPU jobs (one task per node here).
        "tasks_per_gpu": 0,
        "runtime": TRAIN_RUNTIME_MINUTES,
        "mem_mb": mem_mb,
    }


def evaluation_mem_mb(wildcards, input):
    """An evaluation job's memory (distmis.cluster.memory.evaluation_memory)."""
    return evaluation_memory(wildcards.backend, TRAIN, split_sizes(input.info)).mem_mb


# One conversion job's memory: a shard, one case at a time (distmis.cluster.memory).
CONVERSION_MEM_MB = conversion_memory(config).mem_mb


# The GPU check before training: the GPUs one node of the largest training job holds (0: CPU
# workers, nothing to check) and NCCL when a configuration trains over several GPUs.
PREFLIGHT_GPUS = (
    max(
        job_shape(
            g, TRAIN["gpus_per_node"], TRAIN["cpus_per_worker"], True
        ).gpus_per_node
        for gpu_counts in RUN_FOLDERS.values()
        for g in gpu_counts
    )
    if TRAIN["use_gpu"] and RUN_FOLDERS
    else 0
)
PREFLIGHT_NCCL = PREFLIGHT_GPUS > 0 and any(
    folder != "experiment" and max(gpu_counts) > 1
    for folder, gpu_counts in RUN_FOLDERS.items()
)


def preflight_threads(wildcards):
    """Locally, every core, so the check never runs beside a timed training job; on a
    cluster (no --cores), one."""
    return workflow._cores or 1
