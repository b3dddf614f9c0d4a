"""The hyperparameter grid: every combination of the search space, with stable ids."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

# Fixed order so trial ids and the row order of trials.csv never depend on YAML key order.
HYPERPARAMETERS = ("lr", "norm", "beta_2", "amsgrad")


@dataclass(frozen=True)
class HParams:
    """One configuration of the grid."""

    lr: float
    norm: str
    beta_2: float
    amsgrad: bool

    @property
    def trial_id(self) -> str:
        """Readable, stable id, e.g. ``lr=0.001_norm=batch_beta2=0.999_amsgrad=1``."""
        return f"lr={self.lr:g}_norm={self.norm}_beta2={self.beta_2:g}_amsgrad={int(self.amsgrad)}"

    def to_dict(self) -> dict:
        return asdict(self)


def expand_grid(search_space: Mapping[str, Sequence]) -> list[HParams]:
    """All combinations of the search space, in a fixed order (lr, norm, beta_2, amsgrad)."""
    missing = [name for name in HYPERPARAMETERS if name not in search_space]
    if missing:
        raise ValueError(f"search_space lacks {missing}")
    values = [list(search_space[name]) for name in HYPERPARAMETERS]
    return [
        HParams(lr=float(lr), norm=str(norm), beta_2=float(beta_2), amsgrad=bool(amsgrad))
        for lr, norm, beta_2, amsgrad in itertools.product(*values)
    ]
