"""Loading and validating config.yaml: the JSON schema, then the checks a schema cannot express."""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from distmis import backends, modes
from distmis.errors import ConfigError

log = logging.getLogger(__name__)

SCHEMA_RESOURCE = "schemas/config.schema.yaml"


def schema_path() -> Path:
    """Filesystem path of the config schema (Snakemake's ``validate`` wants a path)."""
    return Path(str(resources.files("distmis").joinpath(SCHEMA_RESOURCE)))


def load_schema() -> dict:
    return yaml.safe_load(schema_path().read_text())


def _fill_defaults(validator_class):
    """Extend a jsonschema validator to write ``default`` values into the instance."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def check_semantics(config: Mapping[str, Any]) -> None:
    """Checks across keys that JSON schema cannot express; raise ConfigError naming the key."""
    preprocess = config["data"]["preprocess"]
    split = preprocess["split"]
    total = sum(split.values())
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(
            f"data.preprocess.split: fractions must sum to 1, got {total:g} ({split})"
        )
    train = config["train"]
    # Both U-Nets (backends/*/unet.py) max-pool by 2 once per level, `depth` times, then
    # upsample back and concatenate skips: each stored size must divide by 2**depth. Checked
    # here so a bad shape stops the workflow before conversion, not hours later in training.
    depth = train["model"]["depth"]
    factor = 2**depth
    shape = preprocess["shape"]
    if any(size % factor for size in shape):
        raise ConfigError(
            f"data.preprocess.shape: {shape} must be divisible by 2**train.model.depth = "
            f"{factor} (depth {depth}) on every axis; change the shape or train.model.depth"
        )
    for mode in (modes.get(name) for name in train["modes"]):
        if not mode.takes_k:
            continue
        unused = [k for k in train["gpus_per_trial"] if not mode.gpu_counts(train["gpu_counts"], k)]
        if unused:
            raise ConfigError(
                f"train.gpus_per_trial: k = {unused} divides none of train.gpu_counts "
                f"{train['gpu_counts']} (a {mode.name} job on G GPUs runs G/k trials of k GPUs); "
                "add a G that k divides or drop that k"
            )
    # The rules a run's settings also apply (distmis.train.settings), stated once where they
    # live, applied here to every mode and backend the config lists: a workflow stops at
    # parse time, not when the job that trips them starts.
    # train.search against train.search_space (a distribution needs random or tpe; samples
    # only with them; bounds each hyperparameter can take): distmis.search states the rules.
    from distmis.search import SearchSettings

    _check_distribution_values(train["search_space"], ("choice",))
    SearchSettings.from_config(train)
    _check_distribution_values(train["search_space"], ("loguniform", "uniform", "int"))
    problem = modes.asha_problem(train["scheduler"], train["modes"])
    if problem:
        raise ConfigError(problem)
    for name in train_backends(train):
        backend = backends.get(name)
        backend.check_options(backend.options(train), use_gpu=train["use_gpu"])


def _check_distribution_values(search_space: Mapping[str, Any], keys: tuple[str, ...]) -> None:
    """Each value a ``train.search_space`` distribution of ``keys`` names (a bound, a choice)
    must be one the hyperparameter's list could hold: the schema's ``items`` of that key (lr
    > 0, beta_2 in (0, 1), norm batch or group) is the one statement of it."""
    entries = load_schema()["properties"]["train"]["properties"]["search_space"]["properties"]
    for name, entry in search_space.items():
        if not isinstance(entry, Mapping):
            continue
        item_schema = entries[name]["items"]
        validator = jsonschema.validators.validator_for(item_schema)(item_schema)
        for key, values in entry.items():
            if key not in keys:
                continue
            for index, value in enumerate(values):
                for error in validator.iter_errors(value):
                    raise ConfigError(
                        f"config key train.search_space.{name}.{key}.{index}: {error.message}"
                    )


def run_folders(train: Mapping[str, Any]) -> dict[str, list[int]]:
    """Every training job the config asks for, as ``{mode folder: [G, ...]}``: ``data`` and
    ``experiment`` at every G, ``hybrid{k}`` at every G that k divides
    (:mod:`distmis.modes`)."""
    folders = {}
    for name in train["modes"]:
        mode = modes.get(name)
        for k in train["gpus_per_trial"] if mode.takes_k else [None]:
            gpu_counts = mode.gpu_counts(train["gpu_counts"], k)
            if gpu_counts:
                folders[mode.folder(k)] = gpu_counts
    return folders


def plannable(train: Mapping[str, Any]) -> bool:
    """Whether the runs the config asks for can calibrate ``distmis plan``: it needs a
    one-worker trial (experiment mode at any G, or data mode at G = 1)."""
    for folder, gpu_counts in run_folders(train).items():
        mode, k = modes.from_folder(folder)
        if any(mode.workers_per_trial(g, k) == 1 for g in gpu_counts):
            return True
    return False


def data_parallel_workers(train: Mapping[str, Any]) -> int:
    """The most workers one configuration's Ray Train run uses: the largest G of data mode,
    or the largest k of hybrid mode (1 without either)."""
    workers = [1]
    for folder, gpu_counts in run_folders(train).items():
        mode, k = modes.from_folder(folder)
        workers += [mode.workers_per_trial(g, k) for g in gpu_counts]
    return max(workers)


def resolve_shards(config: dict, cases: int | None = None) -> None:
    """Replace ``auto`` shard counts by the largest data-parallel worker count (at most one
    shard per case of ``cases``, default the source's count), and warn, naming both keys,
    when a split has fewer shards than a data-parallel job has workers."""
    shards = config["data"]["preprocess"]["shards"]
    workers = data_parallel_workers(config["train"])
    from distmis.prepare.split import expected_split_counts

    expected = expected_split_counts(config, cases)
    for split in ("train", "val"):
        if shards[split] == "auto":
            shards[split] = max(1, min(workers, expected[split]))
        if shards[split] < workers:
            log.warning(
                "data.preprocess.shards.%s is %d, fewer than the %d data-parallel workers of "
                "train.gpu_counts: each worker will read every %s shard and keep 1/%d of its "
                "records (%dx the reads); set it to %d or more (or auto)",
                split,
                shards[split],
                workers,
                split,
                workers,
                workers,
                workers,
            )


def train_backends(train: Mapping[str, Any]) -> list[str]:
    """``train.backend`` as a list: a single name or a list of names, in the order given."""
    backend = train["backend"]
    return [backend] if isinstance(backend, str) else list(backend)


def train_env(train: Mapping[str, Any], backend: str) -> str:
    """Name of the conda env file (``envs/<name>.yaml``) that runs ``backend``'s training and
    evaluation jobs.

    One env per backend: TensorFlow's CUDA 12 wheels and PyTorch's CUDA 13 wheels write the
    same files, so they cannot share one. torch takes the CUDA build ``train.torch_cuda``
    names: ``cu13`` (PyPI's wheel, ``train-torch``) or PyTorch's ``cu126`` build
    (``train-torch-cu126``, for sm_70 GPUs and drivers before R580).
    """
    if backend not in backends.NAMES:
        raise ConfigError(f"backend must be one of {backends.NAMES}, got {backend!r}")
    if backend == "torch" and train["torch_cuda"] != "cu13":
        return f"train-torch-{train['torch_cuda']}"
    return f"train-{backend}"


def validate_config(config: dict, cases: int | None = None) -> dict:
    """Validate ``config`` in place against the schema (filling defaults) and return it.

    ``cases``: how many cases the data set has, when known (``distmis convert`` on a folder);
    ``auto`` shard counts are sized from it instead of the configured source's count.
    """
    schema = load_schema()
    validator = _fill_defaults(jsonschema.validators.validator_for(schema))(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        raise ConfigError(f"config key {_key_path(first)}: {first.message}")
    check_semantics(config)
    resolve_shards(config, cases)
    return config


def read_config(paths: Path | Sequence[Path] | None) -> dict:
    """The YAML config file as written (``{}`` when ``paths`` is None), not yet validated.

    Several files are overlays, read as ``snakemake --configfile a.yaml b.yaml`` reads them:
    each later file's mappings are merged into the earlier ones key by key, at every depth,
    and any other value (a list, a number) replaces the earlier one whole.
    """
    if paths is None:
        return {}
    merged: dict = {}
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        raw: Any = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        merged = overlay(merged, raw)
    return merged


def overlay(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict:
    """``base`` with ``update`` merged in: mappings key by key at every depth (as Snakemake
    merges its config files), anything else replaced whole."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = overlay(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(paths: Path | Sequence[Path] | None) -> dict:
    """Read a YAML config file, or several overlaid (:func:`read_config`; the schema defaults
    when None), and validate it."""
    return validate_config(read_config(paths))
