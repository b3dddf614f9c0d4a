# Config validation (once, before any job) and the small helpers the rules share.
import os

from snakemake.utils import validate

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
SRC_DIR = os.path.join(workflow.basedir, "src")
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (SRC_DIR, os.environ.get("PYTHONPATH", "")) if p
)

DATA = config["data"]
PREPROCESS = DATA["preprocess"]
SOURCE_DIR = f"results/data/{DATA['source']}"
TASK_DIR = SOURCE_DIR + "/Task01_BrainTumour"
TFRECORD_DIR = "results/tfrecords"


def shard_names():
    """Every shard file the conversion writes, as fixed by config (split, count, compression)."""
    return [
        shard_filename(split, index, PREPROCESS["shards"][split], PREPROCESS["compression"])
        for split in SPLITS
        for index in range(PREPROCESS["shards"][split])
    ]
