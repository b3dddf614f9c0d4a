"""The hyperparameters: the one list of what a configuration varies, and the grid over them.

:data:`HYPERPARAMETERS` is the table. Everything else derives from it: the fields of
:class:`HParams` (in table order), the grid (:func:`expand_grid`), trial ids
(:attr:`HParams.trial_id`), the hyperparameter columns of trials.csv (:data:`NAMES`,
:meth:`HParams.to_dict`) and which builder each value goes to (:meth:`HParams.model_kwargs`,
:meth:`HParams.optimizer_kwargs`).

Adding a hyperparameter is one :class:`Hyperparameter` row here, its key under
``train.search_space`` in the config schema, and its effect in each backend's model or
optimizer builder. Its trial-id part is appended in table order, so the ids of a grid that
does not vary it still change: results folders are named by them.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


def _number(value: Any) -> str:
    return f"{value:g}"


def _switch(value: Any) -> str:
    return str(int(value))


@dataclass(frozen=True)
class Grid:
    """A hyperparameter's values in a grid search, in the order the grid takes them.

    A search-space entry is a domain; a grid is the only kind today. A sampled one (log-uniform,
    uniform, integer, choice) would be another domain with a ``sample(rng)``, parsed by
    :meth:`Hyperparameter.domain`, and leave :class:`HParams` and trial ids as they are.
    """

    values: tuple[Any, ...]


# Who takes a hyperparameter: the model builder (architecture) or the optimizer.
BUILDERS = ("model", "optimizer")


@dataclass(frozen=True)
class Hyperparameter:
    """One hyperparameter: its ``train.search_space`` key (also its :class:`HParams` field and
    trials.csv column), the type its values are cast to, how the trial id names it and writes
    its value, the value a run that does not search it takes (``default``: Keras' Adam
    defaults and batch norm, what the benchmarks train), and whether the model or the
    optimizer takes it (``builder``)."""

    name: str
    type: type
    id_key: str
    id_format: Callable[[Any], str]
    default: Any
    builder: str  # one of BUILDERS

    def __post_init__(self) -> None:
        if self.builder not in BUILDERS:
            raise ValueError(
                f"{self.name}: builder must be one of {BUILDERS}, got {self.builder!r}"
            )

    def cast(self, value: Any) -> Any:
        return self.type(value)

    def id_part(self, value: Any) -> str:
        return f"{self.id_key}={self.id_format(value)}"

    def domain(self, entry: Any) -> Grid:
        """The domain of a search-space entry: today a list of values (a grid)."""
        if isinstance(entry, str | bytes | Mapping) or not isinstance(entry, Sequence):
            raise ValueError(f"search_space.{self.name}: expected a list of values, got {entry!r}")
        return Grid(tuple(self.cast(value) for value in entry))


# Table order is trial-id order and the order of trials.csv's columns and of the grid's
# product: never the YAML's key order.
HYPERPARAMETERS: tuple[Hyperparameter, ...] = (
    Hyperparameter("lr", float, "lr", _number, 1e-3, "optimizer"),
    Hyperparameter("norm", str, "norm", str, "batch", "model"),
    Hyperparameter("beta_2", float, "beta2", _number, 0.999, "optimizer"),
    Hyperparameter("amsgrad", bool, "amsgrad", _switch, False, "optimizer"),
)
NAMES = tuple(h.name for h in HYPERPARAMETERS)
BY_NAME = {h.name: h for h in HYPERPARAMETERS}


class _Methods:
    """What a configuration offers beyond its values (the fields, from the table, are added by
    :func:`dataclasses.make_dataclass` below)."""

    @property
    def trial_id(self) -> str:
        """Readable, stable id, e.g. ``lr=0.001_norm=batch_beta2=0.999_amsgrad=1``."""
        return "_".join(h.id_part(getattr(self, h.name)) for h in HYPERPARAMETERS)

    def to_dict(self) -> dict[str, Any]:
        """``{name: value}`` in table order: trials.csv's hyperparameter columns, Ray's payload."""
        return {name: getattr(self, name) for name in NAMES}

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]):
        """The configuration ``payload`` names, each value cast; a missing or unknown name
        fails (both sides of a Ray payload must agree on the table)."""
        if set(payload) != set(NAMES):
            raise KeyError(
                f"hyperparameters: missing {sorted(set(NAMES) - set(payload))}, "
                f"unknown {sorted(set(payload) - set(NAMES))}"
            )
        return cls(**{name: BY_NAME[name].cast(value) for name, value in payload.items()})

    def model_kwargs(self) -> dict[str, Any]:
        """The hyperparameters the model builder takes, by name (``norm``)."""
        return self._for("model")

    def optimizer_kwargs(self) -> dict[str, Any]:
        """The hyperparameters the optimizer takes, by name (``lr``, ``beta_2``, ``amsgrad``)."""
        return self._for("optimizer")

    def as_space(self) -> dict[str, list[Any]]:
        """The search space whose grid is this one configuration (a one-trial run)."""
        return {name: [value] for name, value in self.to_dict().items()}

    def _for(self, builder: str) -> dict[str, Any]:
        return {h.name: getattr(self, h.name) for h in HYPERPARAMETERS if h.builder == builder}


# The fields come from the table, so a hyperparameter is declared once. A field's default is
# its table default: HParams() is the configuration a run that searches nothing trains.
HParams = dataclasses.make_dataclass(
    "HParams",
    [(h.name, h.type, dataclasses.field(default=h.default)) for h in HYPERPARAMETERS],
    bases=(_Methods,),
    frozen=True,
    namespace={
        "__module__": __name__,  # pickles by reference (Ray workers, process pools)
        "__doc__": "One configuration of the grid: a value per hyperparameter (table order).",
    },
)


def parse_space(search_space: Mapping[str, Any]) -> dict[str, Grid]:
    """Every hyperparameter's domain, in table order; ValueError for a missing or unknown one."""
    missing = [name for name in NAMES if name not in search_space]
    if missing:
        raise ValueError(f"search_space lacks {missing}")
    unknown = sorted(set(search_space) - set(NAMES))
    if unknown:
        raise ValueError(f"search_space has unknown hyperparameters {unknown}; known: {NAMES}")
    return {h.name: h.domain(search_space[h.name]) for h in HYPERPARAMETERS}


def expand_grid(search_space: Mapping[str, Any]) -> list[HParams]:
    """All combinations of the search space, in a fixed order (the table's, last one fastest)."""
    domains = parse_space(search_space)
    return [
        HParams(**dict(zip(NAMES, values, strict=True)))
        for values in itertools.product(*(domains[name].values for name in NAMES))
    ]
