# Config validation (once, before any job) and the small helpers the rules share.
import os
import sys

from snakemake.utils import validate

# The workflow imports its own library from the checkout, installed or not.
sys.path.insert(0, os.path.join(workflow.basedir, "src"))

from distmis.config import check_semantics, schema_path
from distmis.data.split import SPLITS, shard_filename
from distmis.errors import ConfigError

validate(config, str(schema_path()), set_default=True)
try:
    check_semantics(config)
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None

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
# Wall-clock limit asked of a scheduler for one training job; generous for the grid.
TRAIN_RUNTIME_MINUTES = 24 * 60


def train_outputs():
    """summary.json of every (mode, G) the config asks for."""
    return [
        f"results/train/{mode}/{gpus}gpu/summary.json"
        for mode in TRAIN["modes"]
        for gpus in TRAIN["gpu_counts"]
    ]


def train_gpus(wildcards):
    """GPUs a training job requests: G with GPUs, none on CPU-only hosts."""
    return int(wildcards.gpus) if TRAIN["use_gpu"] else 0


def train_nodes(wildcards):
    """Nodes a job for G GPUs spans: ceil(G / gpus_per_node)."""
    return -(-int(wildcards.gpus) // TRAIN["gpus_per_node"])
