"""Training settings: config.yaml ``train`` section + command-line choices, validated once."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from distmis.errors import ConfigError
from distmis.train.grid import HParams, expand_grid

MODES = ("data", "experiment")

# The original DistMIS scripts read a JSON file with these keys; they map onto ours.
SEED_CONFIG_KEYS = {
    "num_replicas": "gpus",
    "batch_size_per_replica": "batch_size_per_replica",
    "num_epochs": "epochs",
    "debug": "debug",
}


@dataclass(frozen=True)
class TrainSettings:
    """Everything one training job needs besides the grid itself."""

    mode: str
    gpus: int
    tfrecord_dir: Path
    out_dir: Path
    use_gpu: bool
    cpus_per_worker: int
    epochs: int
    batch_size_per_replica: int
    scale_lr: bool
    seed: int
    cache: bool
    max_failures: int
    debug: bool
    depth: int
    base_filters: int
    ray_address: str | None
    search_space: Mapping[str, Any]
    # Trial ids that raise on purpose; only the fault-tolerance tests set this.
    fail_trials: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.gpus < 1:
            raise ConfigError(f"gpus must be >= 1, got {self.gpus}")

    @classmethod
    def from_config(
        cls, train: Mapping[str, Any], *, mode: str, gpus: int, tfrecord_dir: Path, out_dir: Path
    ) -> TrainSettings:
        """Build from the validated ``train`` config section."""
        return cls(
            mode=mode,
            gpus=gpus,
            tfrecord_dir=Path(tfrecord_dir),
            out_dir=Path(out_dir),
            use_gpu=train["use_gpu"],
            cpus_per_worker=train["cpus_per_worker"],
            epochs=train["epochs"],
            batch_size_per_replica=train["batch_size_per_replica"],
            scale_lr=train["scale_lr"],
            seed=train["seed"],
            cache=train["cache"],
            max_failures=train["max_failures"],
            debug=train["debug"],
            depth=train["model"]["depth"],
            base_filters=train["model"]["base_filters"],
            ray_address=train["ray_address"],
            search_space=dict(train["search_space"]),
        )

    def with_seed_config(self, path: Path) -> TrainSettings:
        """Override from an original-DistMIS JSON file (``num_replicas``, ``num_epochs``, ...)."""
        try:
            payload = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"seed config {path}: {exc}") from exc
        unknown = sorted(set(payload) - set(SEED_CONFIG_KEYS))
        if unknown:
            raise ConfigError(
                f"seed config {path}: unknown key(s) {unknown}; known: {sorted(SEED_CONFIG_KEYS)}"
            )
        return replace(self, **{SEED_CONFIG_KEYS[k]: v for k, v in payload.items()})

    def grid(self) -> list[HParams]:
        return expand_grid(self.search_space)

    def lr_effective(self, hparams: HParams) -> float:
        """Linear scaling (lr × workers) applies to data mode only, when switched on."""
        return hparams.lr * self.gpus if (self.scale_lr and self.mode == "data") else hparams.lr

    def worker_settings(self) -> dict:
        """The JSON-able dict the per-worker loop reads (see loop.SETTINGS_KEYS)."""
        return {
            "tfrecord_dir": str(self.tfrecord_dir.resolve()),
            "out_dir": str(self.out_dir.resolve()),
            "mode": self.mode,
            "workers": self.gpus if self.mode == "data" else 1,
            "epochs": self.epochs,
            "batch_size_per_replica": self.batch_size_per_replica,
            "seed": self.seed,
            "cache": self.cache,
            "depth": self.depth,
            "base_filters": self.base_filters,
            "cpus_per_worker": self.cpus_per_worker,
            "debug": self.debug,
            "fail_trials": list(self.fail_trials),
        }

    def to_json(self) -> dict:
        payload = asdict(self)
        payload.update(
            tfrecord_dir=str(self.tfrecord_dir),
            out_dir=str(self.out_dir),
            fail_trials=list(self.fail_trials),
        )
        return payload
