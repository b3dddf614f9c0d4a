"""The contract every backend fulfils: what the training, evaluation and reporting stages may
ask of a framework, and nothing else.

A backend is a stateless object (one per framework, ``BACKEND`` in its package) whose methods
import the framework only when called, so that choosing one costs nothing and a process only
ever loads the framework it uses.
"""

from __future__ import annotations

import contextlib
import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from distmis.errors import ConfigError

if TYPE_CHECKING:
    from distmis.shards.info import DatasetInfo
    from distmis.shards.records import Record

# One case's image (X, Y, Z, C) float32 → sigmoid probabilities (X, Y, Z, K) float32.
Predictor = Callable[[np.ndarray], np.ndarray]


class Backend(ABC):
    """One framework's way to train, save, load and read.

    Class attributes:

    - ``name``: the value of ``train.backend`` and the ``results/train/{backend}/`` folder;
    - ``model_suffix``: the suffix of its model files (``.keras``, ``.pt``); a trial saves
      ``model<suffix>``, a run's best model is ``best_model<suffix>``;
    - ``worker_env``: environment variables its Ray workers need before their first import;
    - ``loop_module``: the module of its training loop, which defines ``train_loop_per_worker``,
      ``train_grid_per_worker`` and ``TRIAL_STEPS`` (its :class:`~distmis.trial.TrialSteps`).
    """

    name: ClassVar[str]
    model_suffix: ClassVar[str]
    worker_env: ClassVar[Mapping[str, str]] = {}
    loop_module: ClassVar[str]

    @property
    def trial_model_file(self) -> str:
        """File name of the model a trial leaves in ``trials/<trial_id>/``."""
        return f"model{self.model_suffix}"

    @property
    def best_model_file(self) -> str:
        """File name of a run's best model, beside its ``best_model.json`` card."""
        return f"best_model{self.model_suffix}"

    def options(self, train: Mapping[str, Any]) -> dict[str, Any]:
        """This backend's own switches from the validated ``train`` config section (its
        ``train.<name>`` key), defaults resolved: a run's ``backend_options``, which only
        this backend reads. Empty by default."""
        return {}

    def check_options(self, options: Mapping[str, Any], *, use_gpu: bool) -> None:
        """Raise :class:`~distmis.errors.ConfigError`, naming the config key, for switches
        this backend does not take or cannot train with (on GPUs when ``use_gpu``). The one
        check of them: config validation asks it for every backend the config lists, a run's
        settings for theirs. By default a backend takes none."""
        if options:
            raise ConfigError(f"backend {self.name} takes no options, got {sorted(options)}")

    def train_loop_per_worker(self) -> Callable[[dict], None]:
        """The function Ray Train runs on each of G workers (data mode) and Ray Tune runs as one
        trial (experiment mode). It takes a :class:`~distmis.trial.TrialConfig` as a dict,
        is a module-level function (so it pickles by reference) and leaves the files of
        :mod:`distmis.trial`."""
        return self._loop().train_loop_per_worker

    def trial_steps(self) -> Callable[..., Any]:
        """The backend's :data:`~distmis.trial.StepsBuilder` (its ``TrialSteps`` class):
        what :meth:`train_loop_per_worker` runs under Ray and the local runner
        (:mod:`distmis.train.local`) runs in-process. Imports the framework, never Ray."""
        return self._loop().TRIAL_STEPS

    def train_grid_per_worker(self) -> Callable[[dict], None]:
        """What each worker of data mode's one Ray Train run executes: the whole grid, one
        configuration after another (:func:`distmis.worker_group.train_grid`)."""
        return self._loop().train_grid_per_worker

    def _loop(self) -> ModuleType:
        # Imported when a trial runs, in its own process: a torch job never imports TensorFlow.
        return importlib.import_module(self.loop_module)

    @abstractmethod
    def ray_trainer(
        self,
        train_loop_config: dict,
        *,
        scaling_config: Any,
        run_config: Any,
        use_gpu: bool,
        whole_grid: bool = False,
    ) -> Any:
        """A Ray Train trainer (``TensorflowTrainer``, ``TorchTrainer``) running
        :meth:`train_loop_per_worker` (one configuration; hybrid mode) or, with
        ``whole_grid``, :meth:`train_grid_per_worker` (data mode) with ``train_loop_config`` on
        ``scaling_config``'s workers, with synchronous all-reduce between them."""

    @abstractmethod
    def predictor(self, model_file: Path) -> Predictor:
        """The model saved in ``model_file`` as a :data:`Predictor` (GPU when there is one)."""

    @abstractmethod
    def read_records(self, info: DatasetInfo, split: str) -> Iterator[Record]:
        """Every decoded record of ``split`` in shard order, read with this framework's own
        reader (so evaluation needs no other framework)."""

    @abstractmethod
    def versions(self) -> dict[str, str]:
        """Versions of the framework (and its Keras, if any), for summary.json."""

    def run_devices(self, use_gpu: bool) -> contextlib.AbstractContextManager[None]:
        """A context a training run lasts in: what the framework must be told, before this
        process or the run's workers import it, about the devices the run may use (TensorFlow:
        the CPU only when ``use_gpu`` is false). Nothing by default."""
        return contextlib.nullcontext()

    @abstractmethod
    def device_report(self, *, check_nccl: bool) -> dict[str, Any]:
        """What the framework sees of this host's GPUs (:mod:`distmis.train.preflight`):
        ``framework``, ``cuda_build``, ``cudnn_build``, ``gpus`` (index, name, compute
        capability, a kernel run on each) and ``nccl`` (version or error, when asked)."""

    @abstractmethod
    def device_problems(
        self, facts: Mapping[str, Any], *, expected_gpus: int, driver: str | None
    ) -> list[str]:
        """What keeps the framework from training on ``expected_gpus`` GPUs of this host,
        given its :meth:`device_report`; each names its fix (the env file, the build, the
        driver)."""
