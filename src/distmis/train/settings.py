"""Training settings: config.yaml ``train`` section + command-line choices, validated once."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distmis import backends, modes
from distmis.config import train_backends
from distmis.errors import ConfigError
from distmis.hparams import HParams
from distmis.search import Proposal, Search, SearchSettings
from distmis.sequential_asha import AshaRule
from distmis.trial import TrialConfig, WorkerSettings

if TYPE_CHECKING:
    from distmis.backends.base import Backend

# Who runs the trials: Ray (Train in data mode, Tune in experiment mode) or this process
# (distmis.train.local: one device, no Ray).
RUNNERS = ("ray", "local")

# The original DistMIS TensorFlow scripts read a JSON file with these keys; they map onto ours.
SEED_CONFIG_KEYS = {
    "num_replicas": "gpus",
    "batch_size_per_replica": "batch_size_per_replica",
    "num_epochs": "epochs",
    "debug": "debug",
}
# ... and its PyTorch extension these (`num_workers` = nodes × gpus per node = G).
TORCH_SEED_CONFIG_KEYS = (
    "lr",
    "epochs",
    "verbose",
    "nodes",
    "gpus",
    "batch_size",
    "num_workers",
    "use_gpu",
)


def _seed_config_overrides(payload: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """TrainSettings fields from an original-DistMIS JSON file (TensorFlow or PyTorch keys)."""
    known = set(SEED_CONFIG_KEYS) | set(TORCH_SEED_CONFIG_KEYS)
    unknown = sorted(set(payload) - known)
    if unknown:
        raise ConfigError(f"seed config {path}: unknown key(s) {unknown}; known: {sorted(known)}")
    overrides = {SEED_CONFIG_KEYS[k]: v for k, v in payload.items() if k in SEED_CONFIG_KEYS}
    if "epochs" in payload:
        overrides["epochs"] = payload["epochs"]
    if "batch_size" in payload:
        overrides["batch_size_per_replica"] = payload["batch_size"]
    if "use_gpu" in payload:
        overrides["use_gpu"] = bool(payload["use_gpu"])
    if "verbose" in payload:
        # The original passed it to its training loop's progress output; ours is `debug`.
        overrides["debug"] = bool(payload["verbose"])
    if "lr" in payload:
        # One learning rate replaces the grid's lr axis; the other hyperparameters stay.
        overrides["lr"] = float(payload["lr"])
    nodes, per_node, workers = (payload.get(k) for k in ("nodes", "gpus", "num_workers"))
    if nodes is not None and per_node is not None:
        if workers is not None and workers != nodes * per_node:
            raise ConfigError(
                f"seed config {path}: num_workers {workers} != nodes {nodes} × gpus {per_node}"
            )
        workers = nodes * per_node
    if workers is not None:
        if "gpus" in overrides and overrides["gpus"] != workers:
            raise ConfigError(
                f"seed config {path}: num_replicas {overrides['gpus']} disagrees with "
                f"num_workers (nodes × gpus) {workers}"
            )
        overrides["gpus"] = workers
    for name in ("gpus", "epochs", "batch_size_per_replica"):
        value = overrides.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ConfigError(f"seed config {path}: {name} must be an integer >= 1, got {value!r}")
    return overrides


# TrainSettings fields that come from the config elsewhere than train.<field name>.
CONFIG_PATHS = {
    "depth": ("model", "depth"),
    "base_filters": ("model", "base_filters"),
    "asha_grace_period": ("asha", "grace_period"),
    "asha_reduction_factor": ("asha", "reduction_factor"),
}


def _backend(name: str) -> Backend:
    """The backend called ``name``; ConfigError names the choices."""
    if name not in backends.NAMES:
        raise ConfigError(f"backend must be one of {backends.NAMES}, got {name!r}")
    return backends.get(name)


def _config_value(train: Mapping[str, Any], name: str) -> Any:
    value = train
    for key in CONFIG_PATHS.get(name, (name,)):
        value = value[key]
    return value


@dataclass(frozen=True, kw_only=True)
class TrainSettings(WorkerSettings):
    """One training job: what its workers are told (the :class:`~distmis.trial.WorkerSettings`
    fields it extends; :meth:`worker_settings` is that part alone) and what only the driver
    reads (below).

    Built from a validated config, it checks what the run itself chooses or overrides (mode,
    G, k, runner, backend; use_gpu from a seed config) against the rules, each stated once
    where it lives: :meth:`Mode.k_problem <distmis.modes.Mode.k_problem>`,
    :func:`~distmis.modes.asha_problem`, the backend's ``check_options``. What the schema
    settles (enums, ranges) it does not check again.

    ``to_dict`` (inherited) is what workers receive; :meth:`to_json` is every field, for
    summary.json and the run's fingerprint.
    """

    gpus: int
    scale_lr: bool
    ray_address: str | None
    search_space: Mapping[str, Any]
    # train.cache_dir: where node caches live (None: distmis.shards.node_cache.cache_root).
    cache_dir: str | None
    # Hybrid mode's k: GPUs (workers) per trial, G/k trials at once. Data mode is k = G and
    # experiment mode k = 1 (workers_per_trial); only hybrid reads this field.
    gpus_per_trial: int
    scheduler: str
    gpus_per_node: int  # a hybrid trial with k <= this stays on one node
    asha_grace_period: int
    asha_reduction_factor: int
    runner: str = "ray"
    # train.search (distmis.search): how configurations are chosen from search_space; the
    # grid unless the config says otherwise.
    search: SearchSettings = SearchSettings()

    def __post_init__(self) -> None:
        if self.mode not in modes.NAMES:
            raise ConfigError(f"mode must be one of {modes.NAMES}, got {self.mode!r}")
        if self.gpus < 1:
            raise ConfigError(f"gpus must be >= 1, got {self.gpus}")
        for problem in (
            self.mode_spec.k_problem(self.gpus, self.gpus_per_trial),
            modes.asha_problem(self.scheduler, [self.mode]),
        ):
            if problem:
                raise ConfigError(problem)
        if self.runner not in RUNNERS:
            raise ConfigError(f"runner must be one of {RUNNERS}, got {self.runner!r}")
        if self.runner == "local" and self.mode_spec.takes_k:
            raise ConfigError(
                f"the local runner has one device: {self.mode} mode needs --runner ray"
            )
        if self.runner == "local" and self.scheduler != "none":
            raise ConfigError("the local runner trains every configuration: scheduler must be none")
        if self.runner == "local" and self.gpus != 1:
            raise ConfigError(
                f"the local runner trains on one device in one process; G = {self.gpus} "
                "needs the Ray runner (--runner ray)"
            )
        _backend(self.backend).check_options(self.backend_options, use_gpu=self.use_gpu)

    @classmethod
    def from_config(
        cls,
        train: Mapping[str, Any],
        *,
        mode: str,
        gpus: int,
        tfrecord_dir: Path,
        out_dir: Path,
        backend: str | None = None,
        gpus_per_trial: int | None = None,
    ) -> TrainSettings:
        """Build from the validated ``train`` config section.

        ``backend`` picks one of ``train.backend`` (a name or a list); None takes the only
        one configured, and is an error when the config lists several. ``gpus_per_trial`` is
        hybrid mode's k (one of ``train.gpus_per_trial``; None: its only or first value).
        Every other field without a default is ``train.<field>`` (or :data:`CONFIG_PATHS`'
        key), so a new setting is a field and a schema key, not another line here.
        """
        configured = train_backends(train)
        if backend is None:
            if len(configured) > 1:
                raise ConfigError(
                    f"train.backend lists {configured}: choose one (--backend) for this run"
                )
            backend = configured[0]
        if gpus_per_trial is None:
            gpus_per_trial = train["gpus_per_trial"][0] if modes.get(mode).takes_k else 1
        chosen = {
            "mode": mode,
            "gpus": gpus,
            "tfrecord_dir": Path(tfrecord_dir),
            "out_dir": Path(out_dir),
            "backend": backend,
            "gpus_per_trial": gpus_per_trial,
            # Each backend takes its own switches (train.torch for torch); others none.
            "backend_options": _backend(backend).options(train),
            "search_space": dict(train["search_space"]),
            "search": SearchSettings.from_config(train),
        }
        configured_fields = [
            f.name
            for f in fields(cls)
            if f.default is MISSING and f.default_factory is MISSING and f.name not in chosen
        ]
        return cls(**chosen, **{name: _config_value(train, name) for name in configured_fields})

    def with_seed_config(self, path: Path) -> TrainSettings:
        """Override from an original-DistMIS JSON file.

        TensorFlow keys: ``num_replicas`` (G), ``batch_size_per_replica``, ``num_epochs``,
        ``debug``. PyTorch extension keys: ``lr`` (replaces the grid's lr axis), ``epochs``,
        ``verbose`` (non-zero → ``debug``), ``batch_size`` (per replica), ``num_workers`` or
        ``nodes`` × ``gpus`` (G; checked against each other), ``use_gpu``.
        """
        try:
            payload = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"seed config {path}: {exc}") from exc
        if not isinstance(payload, dict):
            raise ConfigError(f"seed config {path}: expected a JSON object")
        overrides = _seed_config_overrides(payload, Path(path))
        lr = overrides.pop("lr", None)
        if lr is not None:
            if not lr > 0:
                raise ConfigError(f"seed config {path}: lr must be > 0, got {lr}")
            overrides["search_space"] = {**self.search_space, "lr": [lr]}
        return replace(self, **overrides)

    def configurations(self, run_dir: Path | None = None) -> list[Proposal]:
        """What the runners train when it is known before training starts: the grid's every
        combination (table order), or random search's ``samples`` drawn up front from its
        seeded generator (the same seed, the same list, whatever trains first).

        Random search's proposals are asked through :class:`~distmis.search.Search`, so
        ``run_dir``'s ``search.jsonl`` records them (and, on a resume, they are replayed and
        checked, not drawn anew). TPE proposes from the results told so far: it has no list
        up front; its runners ask :meth:`search` one configuration at a time.
        """
        if self.search.algorithm == "tpe":
            raise ValueError("TPE proposes as results arrive: ask TrainSettings.search_record()")
        record_in = run_dir if self.search.algorithm != "grid" else None  # a grid has no record
        return Search.open(self.search, self.search_space, record_in).ask_all()

    @property
    def tune_proposes(self) -> bool:
        """Whether Ray Tune's searcher proposes this run's configurations (TPE in experiment
        and hybrid mode, :mod:`distmis.train.tune_search`), not a list or a
        :class:`~distmis.search.Search` replayed from ``search.jsonl``."""
        return (
            self.search.algorithm == "tpe"
            and self.runner == "ray"
            and self.mode_spec.ray_train != "grid"  # data mode: one Train run, no Tune
        )

    def search_record(self, run_dir: Path) -> Search:
        """This run's search, brought to where ``run_dir``'s ``search.jsonl`` left it."""
        return Search.open(self.search, self.search_space, run_dir)

    @property
    def asha(self) -> AshaRule | None:
        """ASHA's parameters for this run (the grace period capped at the epochs), or None
        when it stops nothing early: Tune's scheduler and data mode's rungs both take these."""
        if self.scheduler != "asha":
            return None
        return AshaRule.for_epochs(self.epochs, self.asha_grace_period, self.asha_reduction_factor)

    @property
    def mode_spec(self) -> modes.Mode:
        """The run's mode (:mod:`distmis.modes`)."""
        return modes.get(self.mode)

    @property
    def workers_per_trial(self) -> int:
        """Ranks one configuration trains on: G (data), 1 (experiment), k (hybrid)."""
        return self.mode_spec.workers_per_trial(self.gpus, self.gpus_per_trial)

    @property
    def concurrent_trials(self) -> int:
        """Configurations training at once: 1 (data), G (experiment), G/k (hybrid)."""
        return self.mode_spec.trials_at_once(self.gpus, self.gpus_per_trial)

    @property
    def lr_scale(self) -> int:
        """What a trial's lr is multiplied by: its workers when ``scale_lr`` is on and it has
        more than one (data and hybrid mode; linear scaling), else 1."""
        return self.workers_per_trial if self.scale_lr and self.workers_per_trial > 1 else 1

    def lr_effective(self, hparams: HParams) -> float:
        return hparams.lr * self.lr_scale

    def worker_settings(self) -> WorkerSettings:
        """What every worker of this run is told: the :class:`WorkerSettings` part of these
        settings, as a worker reads it back from :meth:`to_dict` (absolute paths)."""
        return WorkerSettings.from_dict(self.to_dict())

    def trial_config(self, proposal: Proposal) -> TrialConfig:
        """The configuration every worker of ``proposal``'s trial receives; its folder is
        ``trials/<proposal.trial_id>``."""
        return TrialConfig.of_proposal(proposal, self.worker_settings(), self.lr_scale)

    def grid_entry(self, proposal: Proposal) -> dict:
        """``trial_config(proposal)`` as a dict without the settings, which a Ray run sends
        once for the whole list (Tune's grid_search entries, data mode's trial list)."""
        entry = self.trial_config(proposal).to_dict()
        del entry["settings"]
        return entry

    def to_json(self) -> dict:
        """Every field, JSON-able, paths as given: summary.json's ``settings``."""
        payload = asdict(self)
        payload.update(
            tfrecord_dir=str(self.tfrecord_dir),
            out_dir=str(self.out_dir),
            fail_trials=list(self.fail_trials),
        )
        return payload
