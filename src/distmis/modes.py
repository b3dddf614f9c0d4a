"""The parallelism modes: the one place a mode is defined. Config, rules, training, scaling, the
planner and the memory sizing look a mode up here (:func:`get`, :func:`from_folder`) instead of
comparing its name.

- **data**: one configuration at a time over all G workers (Ray Train, synchronous
  all-reduce); k = G workers per configuration.
- **experiment**: G configurations at once, one worker each (Ray Tune); k = 1.
- **hybrid**: G/k configurations at once, each a Ray Train run over k workers (Ray Tune over
  Ray Train); 2 <= k <= G with k dividing G, one series per k (folder ``hybrid{k}``).

Adding a mode is one :class:`Mode` here, its trainer of pending configurations in ``train/``
(handed to the grid skeleton every runner shares, :func:`distmis.train.grid.run_grid`) and its
rule in ``rules/train.smk`` (docs/how-to/adding-a-backend-or-mode.md).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    """One way to spend G GPUs on a grid.

    ``k``, GPUs per configuration, is fixed by the mode (data: G, experiment: 1) or given
    (hybrid: ``takes_k``). ``ray_train``: where the mode runs Ray Train — ``"grid"`` (one run
    for the whole grid), ``"trial"`` (one run per configuration, each with its own driver and
    controller) or None (Ray Tune trials only). ``runner``: ``module:function`` that trains a
    grid in this mode (``distmis.train``: the grid skeleton, ``run_grid``, around the mode's
    trainer of pending configurations), imported only when a job trains.
    """

    name: str
    rule: str
    runner: str
    takes_k: bool = False
    ray_train: str | None = None
    # Why Tune's ASHA cannot stop configurations in this mode; None where it can.
    asha_refused: str | None = None
    # The mode whose one-GPU run is this mode's speedup baseline (hybrid: experiment at G = 1).
    baseline: str = ""

    def workers_per_trial(self, gpus: int, k: int | None = None) -> int:
        """Workers (GPUs) one configuration trains on at G = ``gpus``."""
        if self.takes_k:
            if k is None:
                raise ValueError(f"{self.name} mode needs k, its GPUs per configuration")
            return k
        return gpus if self.ray_train == "grid" else 1

    def trials_at_once(self, gpus: int, k: int | None = None) -> int:
        """Configurations training at once at G = ``gpus``."""
        return gpus // self.workers_per_trial(gpus, k)

    def folder(self, k: int | None = None) -> str:
        """The results folder of the mode's runs: ``results/train/{backend}/{folder}/{G}gpu``."""
        if self.takes_k:
            if k is None:
                raise ValueError(f"{self.name} mode's folder needs k")
            return f"{self.name}{k}"
        return self.name

    def gpu_counts(self, gpu_counts: Sequence[int], k: int | None = None) -> list[int]:
        """The G of ``gpu_counts`` this mode runs at (hybrid: those k divides, G >= k)."""
        return [g for g in gpu_counts if self.k_problem(g, k) is None]

    def k_problem(self, gpus: int, k: int | None) -> str | None:
        """Why ``k`` cannot run at G = ``gpus`` in this mode (None: it can): the one
        statement of hybrid's rule, which :meth:`gpu_counts` and a run's settings apply."""
        if not self.takes_k:
            return None
        if k is None or k < 2 or k > gpus or gpus % k:
            return (
                f"{self.name} mode on G = {gpus} needs gpus_per_trial k with 2 <= k <= G "
                f"and k dividing G, got k = {k}"
            )
        return None


DATA = Mode(
    "data",
    "train_data_parallel",
    "distmis.train.data_parallel:run_data_parallel",
    ray_train="grid",
    # ASHA's rule applied by the workers themselves, configuration after configuration
    # (distmis.sequential_asha), since no Tune scheduler runs in data mode.
    asha_refused=None,
    baseline="data",
)
EXPERIMENT = Mode(
    "experiment",
    "train_experiment_parallel",
    "distmis.train.experiment_parallel:run_experiment_parallel",
    baseline="experiment",
)
HYBRID = Mode(
    "hybrid",
    "train_hybrid_parallel",
    "distmis.train.experiment_parallel:run_hybrid_parallel",
    takes_k=True,
    ray_train="trial",
    # ASHA stops a hybrid trial's Train run too (distmis.train.report_forwarding.stoppable).
    baseline="experiment",
)

MODES: dict[str, Mode] = {mode.name: mode for mode in (DATA, EXPERIMENT, HYBRID)}
NAMES = tuple(MODES)
# The training rules, for a message naming what writes a run folder.
ANY_RULE = " / ".join(mode.rule for mode in MODES.values())
_FOLDER = re.compile(r"^([a-z]+?)(\d*)$")


def asha_problem(scheduler: str, names: Sequence[str]) -> str | None:
    """Why ``train.scheduler`` cannot be ``scheduler`` for runs in the modes ``names`` (None:
    it can): the one statement of the rule, which config validation applies to
    ``train.modes`` and a run's settings to its own mode."""
    refused = [MODES[name] for name in names if MODES[name].asha_refused]
    if scheduler != "asha" or not refused:
        return None
    allowed = [name for name in NAMES if not MODES[name].asha_refused]
    return (
        f"train.scheduler: asha stops configurations in {' and '.join(allowed)} mode only; "
        + "; ".join(f"asha is refused in {mode.name} mode: {mode.asha_refused}" for mode in refused)
        + f". Set train.scheduler: none, or train only in {' and '.join(allowed)} mode"
        + f" (train.modes: {allowed})"
    )


def get(name: str) -> Mode:
    """The mode called ``name``; ValueError names the choices."""
    try:
        return MODES[name]
    except KeyError:
        raise ValueError(f"mode must be one of {', '.join(NAMES)}, got {name!r}") from None


def from_rule(rule: str) -> Mode:
    """The mode the training rule ``rule`` runs; ValueError names the training rules."""
    for mode in MODES.values():
        if mode.rule == rule:
            return mode
    raise ValueError(f"not a training rule: {rule!r} (expected one of {ANY_RULE})")


def from_folder(folder: str) -> tuple[Mode, int | None]:
    """The mode and k of a results folder name (``data``, ``experiment``, ``hybrid2``);
    ValueError for anything else."""
    match = _FOLDER.match(folder)
    if match and match.group(1) in MODES:
        mode = MODES[match.group(1)]
        k = int(match.group(2)) if match.group(2) else None
        if (k is not None) == mode.takes_k and (k is None or k >= 2):
            return mode, k
    raise ValueError(f"not a mode folder: {folder!r} (expected one of data, experiment, hybrid<k>)")


def label(name: str, k: int | None = None) -> str:
    """A series' name in tables and figures: the mode's folder (``hybrid2``) or its name."""
    return get(name).folder(k)
