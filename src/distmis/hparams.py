"""The hyperparameters: the one list of what a configuration varies, and the grid over them.

:data:`HYPERPARAMETERS` is the table. Everything else derives from it: the fields of
:class:`HParams` (in table order), the grid (:func:`expand_grid`), trial ids
(:attr:`HParams.trial_id`), the hyperparameter columns of trials.csv (:data:`NAMES`,
:meth:`HParams.to_dict`) and which builder each value goes to (:meth:`HParams.model_kwargs`,
:meth:`HParams.optimizer_kwargs`).

A ``train.search_space`` entry is a *domain* (:meth:`Hyperparameter.domain`): a list of values
(:class:`Grid`: a grid axis, or a categorical choice under random search and TPE) or a
distribution (:class:`LogUniform`, :class:`Uniform`, :class:`IntRange`, :class:`Choice`),
which only random search and TPE (:mod:`distmis.search`) can draw from. Each domain samples
itself from a numpy Generator and states itself as an Optuna distribution.

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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from optuna.distributions import BaseDistribution


def _number(value: Any) -> str:
    return f"{value:g}"


def _switch(value: Any) -> str:
    return str(int(value))


def _plain_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class Grid:
    """A list of values: a grid axis, taken in this order by the grid; under random search or
    TPE a categorical choice among them (as :class:`Choice`)."""

    values: tuple[Any, ...]

    def sample(self, rng: np.random.Generator) -> Any:
        return self.values[int(rng.integers(len(self.values)))]

    def to_optuna(self) -> BaseDistribution:
        from optuna.distributions import CategoricalDistribution

        return CategoricalDistribution(self.values)


@dataclass(frozen=True)
class Choice(Grid):
    """``{choice: [...]}``: one of the values, each equally likely (random) or as TPE learns.
    Unlike a plain list, never a grid axis: the grid refuses it."""


@dataclass(frozen=True)
class _Bounds:
    """A distribution over ``[low, high]`` (``low < high``, both inclusive for Optuna)."""

    low: float
    high: float
    KEY = ""  # the config's name for it

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(
                f"{{{self.KEY}: [low, high]}} needs low < high, got {self.low}, {self.high}"
            )


@dataclass(frozen=True)
class LogUniform(_Bounds):
    """``{loguniform: [low, high]}``: log(value) uniform; ``0 < low < high``."""

    KEY = "loguniform"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.low > 0:
            raise ValueError(f"{{loguniform: [low, high]}} needs low > 0, got {self.low}")

    def sample(self, rng: np.random.Generator) -> float:
        import math

        return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))

    def to_optuna(self) -> BaseDistribution:
        from optuna.distributions import FloatDistribution

        return FloatDistribution(self.low, self.high, log=True)


@dataclass(frozen=True)
class Uniform(_Bounds):
    """``{uniform: [low, high]}``: every value in between equally likely."""

    KEY = "uniform"

    def sample(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(self.low, self.high))

    def to_optuna(self) -> BaseDistribution:
        from optuna.distributions import FloatDistribution

        return FloatDistribution(self.low, self.high)


@dataclass(frozen=True)
class IntRange(_Bounds):
    """``{int: [low, high]}``: an integer from low to high, both included."""

    low: int
    high: int
    KEY = "int"

    def sample(self, rng: np.random.Generator) -> int:
        return int(rng.integers(self.low, self.high + 1))

    def to_optuna(self) -> BaseDistribution:
        from optuna.distributions import IntDistribution

        return IntDistribution(self.low, self.high)


# A distribution's config key → its domain, and the hyperparameter types it can take (a
# choice's values are cast like a list's, so every type takes it).
DISTRIBUTIONS: dict[str, type] = {
    "loguniform": LogUniform,
    "uniform": Uniform,
    "int": IntRange,
    "choice": Choice,
}
_TAKES = {"loguniform": (float,), "uniform": (float,), "int": (int,)}

Domain = Grid | LogUniform | Uniform | IntRange


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

    def _cast_all(self, values: Sequence[Any], where: str) -> tuple[Any, ...]:
        try:
            return tuple(self.cast(value) for value in values)
        except (TypeError, ValueError):
            raise ValueError(
                f"{where}: {self.name} takes {self.type.__name__} values, got {list(values)!r}"
            ) from None

    def id_part(self, value: Any) -> str:
        return f"{self.id_key}={self.id_format(value)}"

    def domain(self, entry: Any) -> Domain:
        """The domain of a search-space entry: a list of values (:class:`Grid`) or a one-key
        mapping naming a distribution (:data:`DISTRIBUTIONS`). ValueError, naming
        ``search_space.<name>``, for anything else, bounds that are not ``low < high`` (and
        ``low > 0`` for loguniform), an ``int`` bound that is not an integer, or a distribution
        this hyperparameter's type cannot take (``uniform`` on ``norm``)."""
        where = f"search_space.{self.name}"
        if isinstance(entry, Mapping):
            return self._distribution(entry, where)
        if isinstance(entry, str | bytes) or not isinstance(entry, Sequence) or not entry:
            raise ValueError(
                f"{where}: expected a list of values or a distribution "
                f"({{{' | '.join(DISTRIBUTIONS)}: ...}}), got {entry!r}"
            )
        return Grid(self._cast_all(entry, where))

    def _distribution(self, entry: Mapping[str, Any], where: str) -> Domain:
        if len(entry) != 1 or next(iter(entry)) not in DISTRIBUTIONS:
            raise ValueError(
                f"{where}: a distribution is one of {{{' | '.join(DISTRIBUTIONS)}: ...}}, "
                f"got {dict(entry)!r}"
            )
        ((key, args),) = entry.items()
        if key == "choice":
            if isinstance(args, str | bytes) or not isinstance(args, Sequence) or not args:
                raise ValueError(f"{where}: {{choice: [...]}} needs a list of values, got {args!r}")
            return Choice(self._cast_all(args, where))
        if self.type not in _TAKES[key]:
            raise ValueError(
                f"{where}: {{{key}: ...}} draws {_TAKES[key][0].__name__}s; {self.name} is a "
                f"{self.type.__name__}: give a list of values or {{choice: [...]}}"
            )
        if (
            isinstance(args, str | bytes)
            or not isinstance(args, Sequence)
            or len(args) != 2
            or not all(_plain_number(bound) for bound in args)
        ):
            raise ValueError(f"{where}: {{{key}: [low, high]}} needs two numbers, got {args!r}")
        if key == "int":
            if not all(float(bound).is_integer() for bound in args):
                raise ValueError(f"{where}: {{int: [low, high]}} needs integers, got {args!r}")
            args = [int(bound) for bound in args]
        try:
            return DISTRIBUTIONS[key](*args)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None


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


def parse_space(search_space: Mapping[str, Any]) -> dict[str, Domain]:
    """Every hyperparameter's domain, in table order; ValueError for a missing or unknown one."""
    missing = [name for name in NAMES if name not in search_space]
    if missing:
        raise ValueError(f"search_space lacks {missing}")
    unknown = sorted(set(search_space) - set(NAMES))
    if unknown:
        raise ValueError(f"search_space has unknown hyperparameters {unknown}; known: {NAMES}")
    return {h.name: h.domain(search_space[h.name]) for h in HYPERPARAMETERS}


def expand_grid(search_space: Mapping[str, Any]) -> list[HParams]:
    """All combinations of the search space, in a fixed order (the table's, last one fastest).
    ValueError for a distribution (only random search and TPE draw from one)."""
    domains = parse_space(search_space)
    for name, domain in domains.items():
        if type(domain) is not Grid:
            raise ValueError(
                f"search_space.{name}: a distribution ({{{_key_of(domain)}: ...}}) cannot be a "
                "grid axis: give a list of values, or search it with random or tpe"
            )
    return [
        HParams(**dict(zip(NAMES, values, strict=True)))
        for values in itertools.product(*(domains[name].values for name in NAMES))
    ]


def _key_of(domain: Domain) -> str:
    """The config's name of a distribution (``loguniform``, ...)."""
    return next(key for key, cls in DISTRIBUTIONS.items() if type(domain) is cls)


def distribution_keys(domains: Mapping[str, Domain]) -> dict[str, str]:
    """``{hyperparameter: distribution key}`` of the entries that are distributions, not
    lists (what the grid refuses)."""
    return {name: _key_of(d) for name, d in domains.items() if type(d) is not Grid}
