"""One trial, whatever the backend: the skeleton every training worker runs.

A worker trains one configuration: in data mode Ray Train runs it on G workers at once; in
experiment mode Ray Tune runs it as one trial. :func:`run_trial` is the loop both backends
share, in the style of nnU-Net's ``run_training``: it resumes, then calls the backend's
:class:`TrialSteps` once per epoch (``train_epoch``, ``validate``, ``save_checkpoint``), reports
and logs every epoch, and saves the model. A backend supplies only those steps
(:mod:`distmis.backends.tensorflow.loop`, :mod:`distmis.backends.torch.loop`), so a benchmark
or a new runner overrides a step instead of copying the loop.

Every trial leaves these files under ``<out>/trials/<trial_id>/``, written through their
contract, :mod:`distmis.run_folder` (:mod:`distmis.train.trials` reads them):

- ``attempts.log``: one start time per attempt (rank 0);
- ``workers/rank<k>.json``: host, pid, GPU ids, batch sizes, steps and devices of each worker
  (``device_type`` gpu or cpu and ``device_name``: what it trained on), and what the backend
  measured by the end (torch: the training volumes it read);
- ``result.json``: times, volumes trained, final metrics ``loss``, ``dice``, ``val_loss``,
  ``val_dice`` (and ``dice_<channel>``), per-epoch ``history``, ``startup_seconds`` (from when
  the runner asked for this configuration to its first training epoch) (rank 0, when it
  finished);
- ``epochs.jsonl``: one JSON line per validated epoch as it happens, ``{"epoch": n (1-based),
  "time": wall-clock seconds after its validation, "started": when its training began,
  "train_seconds", "val_seconds": the two parts in between, "val_dice": ..., <every
  metric>}`` (rank 0;
  appended, so a retried attempt's epochs follow the first's). It survives a trial that was
  stopped early or failed, and is what time-to-quality is measured from;
- ``failed.json``: time and error of the last failed attempt (its first error: of a worker
  group, the rank that failed first, not the peers its failure took down);
- the model, ``model<suffix>`` of the backend (``model.keras``, ``model.pt``), from rank 0.

Checkpoints reported to Ray hold ``state.json`` (:class:`~distmis.run_folder.CheckpointState`:
the epochs done and whose they are: one Ray Train run trains many configurations in data mode)
beside the backend's own files. Nothing here imports TensorFlow or PyTorch.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import socket
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from distmis import modes
from distmis.errors import ContractError
from distmis.hparams import HParams
from distmis.run_folder import (
    CHECKPOINT_STATE_FILE,
    FAILED_FILE,
    RESULT_FILE,
    CheckpointState,
    EpochRecord,
    FailedAttempt,
    TrialResult,
    WorkerInfo,
    append_epoch,
    log_attempt,
    worker_path,
)
from distmis.search import Proposal

log = logging.getLogger(__name__)

# How far apart a group's ranks may enter the same configuration (they leave the previous one
# together, through its last collective).
RANK_START_SKEW_SECONDS = 1.0

# Whether a configuration stops after the epoch it just validated (1-based), given its
# metrics; called on every rank, so it returns the same answer on each (data mode's ASHA).
StopEarly = Callable[[int, Mapping[str, float]], bool]


@dataclass(frozen=True, kw_only=True)
class WorkerSettings:
    """What every worker of a run is told (``config["settings"]``): the part of a run's
    settings that workers read. :class:`distmis.train.settings.TrainSettings` extends it with
    what only the driver reads, so a run's settings *are* its worker settings plus more, and
    nothing is copied field by field.

    It crosses to Ray workers as a JSON-able dict of exactly these fields (:meth:`to_dict`,
    also on a TrainSettings); :meth:`from_dict` turns it back and fails on a missing or
    unknown key, so the two sides cannot drift apart.
    """

    tfrecord_dir: Path
    out_dir: Path
    mode: str
    backend: str
    epochs: int
    batch_size_per_replica: int
    seed: int
    cache: bool
    depth: int
    base_filters: int
    cpus_per_worker: int
    debug: bool
    use_gpu: bool
    # Records held for shuffling by a streaming worker; bounds its memory (docs/explanation/input-memory.md).
    shuffle_buffer: int
    # Attempts per configuration beyond the first (data mode's grid loop skips one that used
    # them all; Ray retries the others).
    max_failures: int
    # The backend's own switches (train.<backend>, e.g. torch's precision): only it reads and
    # checks them (Backend.options, Backend.check_options).
    backend_options: Mapping[str, Any]
    # Trial ids that raise on purpose; only the fault-tolerance tests set this.
    fail_trials: tuple[str, ...] = ()
    # The node cache's scope folder (distmis.shards.node_cache) when cache is on, else None;
    # set when the run starts (not part of its identity).
    cache_scope: str | None = None

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> WorkerSettings:
        """The :class:`WorkerSettings` (never a subclass) that :meth:`to_dict` wrote."""
        names = {f.name for f in fields(WorkerSettings)}
        if set(payload) != names:
            raise KeyError(
                f"worker settings: missing {sorted(names - set(payload))}, "
                f"unknown {sorted(set(payload) - names)}"
            )
        return WorkerSettings(
            **{
                **payload,
                "tfrecord_dir": Path(payload["tfrecord_dir"]),
                "out_dir": Path(payload["out_dir"]),
                "backend_options": dict(payload["backend_options"]),
                "fail_trials": tuple(payload["fail_trials"]),
            }
        )

    def to_dict(self) -> dict[str, Any]:
        """The worker fields only, JSON-able, paths absolute (workers may start elsewhere)."""
        payload = {f.name: getattr(self, f.name) for f in fields(WorkerSettings)}
        return {
            **payload,
            "tfrecord_dir": str(Path(self.tfrecord_dir).resolve()),
            "out_dir": str(Path(self.out_dir).resolve()),
            "backend_options": dict(self.backend_options),
            "fail_trials": list(self.fail_trials),
        }


@dataclass(frozen=True)
class TrialConfig:
    """One trial's configuration as the driver hands it to every worker (as a dict)."""

    trial_id: str
    hparams: HParams
    lr_effective: float  # lr after the optional linear scaling by the worker count
    settings: WorkerSettings
    # When the runner asked for this configuration (epoch seconds; None: when the trial's
    # function was entered): the start of its startup_seconds.
    submitted_at: float | None = None

    @classmethod
    def of_proposal(
        cls, proposal: Proposal, settings: WorkerSettings, lr_scale: int
    ) -> TrialConfig:
        """``proposal``'s trial (folder ``trials/<trial id>``), its lr times ``lr_scale``
        (:attr:`distmis.train.settings.TrainSettings.lr_scale`)."""
        return cls(
            trial_id=proposal.trial_id,
            hparams=proposal.hparams,
            lr_effective=proposal.hparams.lr * lr_scale,
            settings=settings,
        )

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> TrialConfig:
        return cls(
            trial_id=config["trial_id"],
            hparams=HParams.from_dict(config["hparams"]),
            lr_effective=float(config["lr_effective"]),
            settings=WorkerSettings.from_dict(config["settings"]),
            submitted_at=config.get("submitted_at"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "trial_id": self.trial_id,
            "hparams": self.hparams.to_dict(),
            "lr_effective": self.lr_effective,
            "settings": self.settings.to_dict(),
            "submitted_at": self.submitted_at,
        }

    @property
    def directory(self) -> Path:
        return Path(self.settings.out_dir) / "trials" / self.trial_id

    def architecture(self) -> dict[str, Any]:
        """The U-Net's size and its hyperparameters (``norm``), as both backends' builders
        take them."""
        return {
            "depth": self.settings.depth,
            "base_filters": self.settings.base_filters,
            **self.hparams.model_kwargs(),
        }

    def adam(self) -> dict[str, Any]:
        """Adam's hyperparameters for this trial, ``lr`` scaled (``beta_1`` and ``epsilon``
        are fixed, as in Keras)."""
        return {**self.hparams.optimizer_kwargs(), "lr": self.lr_effective}


RUNNER_RAY_TRAIN = "ray_train"
RUNNER_RAY_TUNE = "ray_tune"
RUNNER_LOCAL = "local"


@dataclass(frozen=True)
class Runner:
    """What the framework running the trial gives it: this worker's rank among ``world_size``,
    ``report(metrics, checkpoint=...)``, ``get_checkpoint()`` and the Checkpoint class
    (``from_directory(path)``; an instance's ``as_directory()`` yields its folder).

    ``kind`` says who runs the trial: :data:`RUNNER_RAY_TRAIN` (a worker of a Ray Train
    group, data mode), :data:`RUNNER_RAY_TUNE` (a Ray Tune trial, experiment mode) or
    :data:`RUNNER_LOCAL` (:mod:`distmis.train.local`, this process, no Ray). A backend asks
    Ray for a device or a distributed wrapper only under Ray Train; ``local_rank`` is the
    worker's index on its node (its GPU among the node's).
    """

    rank: int
    world_size: int
    report: Callable[..., None]
    get_checkpoint: Callable[[], Any]
    checkpoint_type: type
    kind: str = RUNNER_LOCAL
    local_rank: int = 0
    # Rank 0's value on every rank (small, picklable); a barrier. One worker: the value.
    broadcast_from_rank_zero: Callable[[Any], Any] = lambda value: value

    @classmethod
    def from_ray(cls, mode: str) -> Runner:
        """Ray Train's context in data and hybrid mode (a worker of a Train run), Ray Tune's
        (one worker) in experiment mode."""
        if modes.get(mode).ray_train is not None:
            import ray.train
            import ray.train.collective

            context = ray.train.get_context()
            return cls(
                rank=context.get_world_rank(),
                world_size=context.get_world_size(),
                report=ray.train.report,
                get_checkpoint=ray.train.get_checkpoint,
                checkpoint_type=ray.train.Checkpoint,
                kind=RUNNER_RAY_TRAIN,
                local_rank=context.get_local_rank(),
                broadcast_from_rank_zero=ray.train.collective.broadcast_from_rank_zero,
            )
        import ray.tune

        # Tune warns about Train's Checkpoint class in a Tune trial; it wants its own.
        return cls(
            0, 1, ray.tune.report, ray.tune.get_checkpoint, ray.tune.Checkpoint, RUNNER_RAY_TUNE
        )


class ScalarBoard(ABC):
    """Per-epoch scalars for TensorBoard, written with the backend's own writer."""

    @abstractmethod
    def add_scalar(self, name: str, value: float, epoch: int) -> None: ...

    @abstractmethod
    def close(self) -> None: ...


class TrialSteps(ABC):
    """One backend's steps for one trial; the backend builds it with its model, optimizer and
    data, and :func:`run_trial` calls it. Every rank calls every method, in this order:
    ``restore`` (when resuming), then per epoch ``train_epoch``, ``validate`` and
    ``save_checkpoint``, then ``finish_fields`` and ``save_model``.

    ``model_file`` (a class attribute): the file name of the model a trial leaves in its
    folder, the backend's ``trial_model_file``.

    Attributes set by the builder: ``steps_per_epoch`` (training steps on every rank),
    ``global_batch`` (volumes per step over all ranks), ``devices`` (what the framework sees,
    e.g. ``["CPU:x86_64"]``), ``device_type`` (``gpu`` or ``cpu``: what this worker trains on)
    and ``device_name`` (the card, e.g. ``NVIDIA H100 80GB HBM3``, or the CPU). A builder
    raises :class:`~distmis.errors.DeviceError` instead when ``use_gpu`` is set and the
    worker has no GPU it can train on.
    """

    model_file: str
    steps_per_epoch: int
    global_batch: int
    devices: list[str]
    device_type: str
    device_name: str

    @abstractmethod
    def restore(self, directory: Path) -> None:
        """Load the state :meth:`save_checkpoint` wrote into ``directory``."""

    @abstractmethod
    def train_epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch (0-based); ``loss``, ``dice``, ``dice_<channel>`` over all ranks."""

    @abstractmethod
    def validate(self, epoch: int) -> dict[str, float]:
        """The val split once: ``val_loss``, ``val_dice``, ``val_dice_<channel>``."""

    @abstractmethod
    def save_checkpoint(self, directory: Path) -> None:
        """Write what resuming needs into ``directory`` (a rank's own temporary folder; only
        rank 0's is kept)."""

    @abstractmethod
    def save_model(self, path: Path | None) -> None:
        """Save the trained model to ``path`` (rank 0) or nowhere (``None``, other ranks)."""

    @abstractmethod
    def open_board(self, directory: Path) -> ScalarBoard:
        """A TensorBoard writer into ``directory`` (rank 0 only)."""

    def finish_fields(self) -> dict[str, Any]:
        """What this worker measured by the end of training, added to its ``rank<k>.json``."""
        return {}


StepsBuilder = Callable[[TrialConfig, Runner], TrialSteps]


class InjectedFailure(RuntimeError):
    """Raised on purpose by trials named in ``settings.fail_trials`` (fault-tolerance tests)."""


def gpu_ids() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return [g for g in visible.split(",") if g]


def cpu_name() -> str:
    return platform.processor() or platform.machine()


def train_loop(build_steps: StepsBuilder) -> Callable[[dict], None]:
    """The ``train_loop_per_worker(config: dict)`` Ray runs, for a backend's steps builder."""

    def train_loop_per_worker(config: dict) -> None:
        started = time.time()
        trial = TrialConfig.from_dict(config)
        run_attempt(trial, Runner.from_ray(trial.settings.mode), build_steps, started)

    return train_loop_per_worker


def run_attempt(
    trial: TrialConfig,
    runner: Runner,
    build_steps: StepsBuilder,
    started: float,
    *,
    stop_early: StopEarly | None = None,
) -> None:
    """One attempt at ``trial`` (:func:`run_trial`), whoever runs it.

    A failure is noted in ``failed.json`` (time and error, for trials.csv) and re-raised, so
    the runner retries or records it.
    """
    try:
        run_trial(trial, runner, build_steps, started, stop_early=stop_early)
    except BaseException as exc:
        trial.directory.mkdir(parents=True, exist_ok=True)
        failure_file = trial.directory / FAILED_FILE
        # A group's ranks fail together: the first error is the cause, a peer's later one
        # (its collective lost a rank) the consequence, so a failure noted since this
        # attempt began stays. An earlier attempt's ended a group restart ago, seconds before.
        noted = _read_failure(failure_file)
        if noted is None or noted.end_time < started - RANK_START_SKEW_SECONDS:
            failure = FailedAttempt(
                start_time=started, end_time=time.time(), error=f"{type(exc).__name__}: {exc}"
            )
            failure.write(failure_file)
        raise


def _read_failure(path: Path) -> FailedAttempt | None:
    """The failure noted so far, if any. This attempt is failing already: a note that cannot
    be read is replaced by this attempt's, not raised over the trial's own error."""
    try:
        return FailedAttempt.read(path) if path.is_file() else None
    except ContractError:
        return None


def run_trial(
    trial: TrialConfig,
    runner: Runner,
    build_steps: StepsBuilder,
    started: float,
    *,
    stop_early: StopEarly | None = None,
) -> None:
    """Train ``trial`` to the end (or resume it), reporting every epoch through ``runner``.

    ``stop_early`` (data mode's ASHA) is asked after every validated epoch but the last, once
    the epoch is in ``epochs.jsonl``; when it says stop, the trial ends there: no report, no
    model, no ``result.json`` (so it is not finished), as when Tune's ASHA stops a trial.
    """
    settings = trial.settings
    if report_if_finished(trial, runner.report):
        return
    start_attempt(trial, runner.rank, started)
    steps = build_steps(trial, runner)
    initial_epoch = 0
    checkpoint = runner.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            steps.restore(Path(ckpt_dir))
            initial_epoch = CheckpointState.read(Path(ckpt_dir) / CHECKPOINT_STATE_FILE).epoch
        log.info("resuming %s from epoch %d", trial.trial_id, initial_epoch)
    write_worker_file(trial, runner, steps)
    board = None
    if runner.rank == 0 and not settings.debug:
        board = steps.open_board(Path(settings.out_dir) / "tensorboard" / trial.trial_id)

    fit_started = time.time()
    history: list[dict[str, float]] = []

    def finish() -> None:
        """Model and result.json, before the last report: a scheduler may end the trial
        there (Tune's ASHA stops every trial that reaches its last epoch), and a trial that
        trained every epoch must not be left looking unfinished."""
        fit_ended = time.time()
        if board is not None:
            board.close()
        add_to_worker_file(trial, runner.rank, **steps.finish_fields())
        steps.save_model(trial.directory / steps.model_file if runner.rank == 0 else None)
        if runner.rank == 0:
            write_result(
                trial,
                started=started,
                fit_started=fit_started,
                fit_ended=fit_ended,
                steps=steps,
                resumed_from_epoch=initial_epoch,
                history=history,
            )

    for epoch in range(initial_epoch, settings.epochs):
        epoch_started = time.time()
        train_metrics = steps.train_epoch(epoch)
        validation_started = time.time()
        metrics = {**train_metrics, **steps.validate(epoch)}
        validated = time.time()
        history.append(metrics)
        log.info(
            "%s epoch %d/%d: %s (%.1f s)",
            trial.trial_id,
            epoch + 1,
            settings.epochs,
            " ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
            time.time() - epoch_started,
        )
        if board is not None:
            for name, value in metrics.items():
                board.add_scalar(name, value, epoch + 1)
        if runner.rank == 0:
            timing = EpochTiming(epoch_started, validation_started, validated)
            _append_epoch(trial, epoch + 1, metrics, timing)
        if epoch + 1 == settings.epochs:
            finish()
        elif stop_early is not None and stop_early(epoch + 1, metrics):
            if board is not None:
                board.close()
            return
        _report_epoch(steps, runner, metrics, epoch + 1, trial.trial_id)
    if initial_epoch >= settings.epochs:  # resumed after the last epoch's checkpoint
        finish()


@dataclass(frozen=True)
class EpochTiming:
    """Wall-clock times (epoch seconds) of one epoch on rank 0: it started training, started
    validating, finished validating. A run's calibration (:mod:`distmis.plan.measure`) splits an
    epoch into its training steps and its validation pass with them."""

    started: float
    validation_started: float
    validated: float

    def fields(self) -> dict[str, float]:
        return {
            "time": self.validated,
            "started": self.started,
            "train_seconds": self.validation_started - self.started,
            "val_seconds": self.validated - self.validation_started,
        }


def _append_epoch(
    trial: TrialConfig, epoch: int, metrics: Mapping[str, float], timing: EpochTiming
) -> None:
    """One line of ``epochs.jsonl``: the epoch, its timing, its metrics."""
    record = EpochRecord(epoch=epoch, **timing.fields(), metrics=dict(metrics))
    append_epoch(trial.directory, record)


def _report_epoch(
    steps: TrialSteps,
    runner: Runner,
    metrics: Mapping[str, float],
    epochs_done: int,
    trial_id: str,
) -> None:
    """Report the epoch's metrics with a checkpoint (rank 0's; every rank writes one, as a
    save may be a collective operation)."""
    with tempfile.TemporaryDirectory() as tmp:
        steps.save_checkpoint(Path(tmp))
        CheckpointState(epoch=epochs_done, trial_id=trial_id).write(
            Path(tmp) / CHECKPOINT_STATE_FILE
        )
        checkpoint = runner.checkpoint_type.from_directory(tmp) if runner.rank == 0 else None
        runner.report({**metrics, "epoch": epochs_done, "time": time.time()}, checkpoint=checkpoint)


def report_if_finished(trial: TrialConfig, report: Callable[..., None]) -> bool:
    """Report a trial whose ``result.json`` exists again instead of training it again.

    Belt and braces for resumption: Tune restores from its last saved experiment state,
    which can lag a trial that finished just before the job was killed.
    """
    finished = trial.directory / RESULT_FILE
    if not finished.is_file():
        return False
    stored = TrialResult.read(finished)
    report({**stored.metrics, "epoch": stored.epochs, "time": stored.end_time})
    return True


def start_attempt(trial: TrialConfig, rank: int, started: float) -> None:
    """Log the attempt (rank 0) and raise for trials configured to fail."""
    if rank == 0:
        log_attempt(trial.directory, started)
    if trial.trial_id in trial.settings.fail_trials:
        raise InjectedFailure(f"trial {trial.trial_id} was configured to fail")


def write_worker_file(trial: TrialConfig, runner: Runner, steps: TrialSteps) -> None:
    info = WorkerInfo(
        backend=trial.settings.backend,
        # Which frameworks this worker process has loaded (a torch worker should not hold
        # TensorFlow's hundreds of MB, nor the reverse).
        frameworks_loaded=tuple(sorted({"tensorflow", "torch"} & set(sys.modules))),
        rank=runner.rank,
        world_size=runner.world_size,
        host=socket.gethostname(),
        pid=os.getpid(),
        gpu_ids=tuple(gpu_ids()),
        batch_size_per_replica=trial.settings.batch_size_per_replica,
        global_batch_size=steps.global_batch,
        steps_per_epoch=steps.steps_per_epoch,
        devices=tuple(steps.devices),
        device_type=steps.device_type,
        device_name=steps.device_name,
        train_volumes_read=None,  # measured by the end (add_to_worker_file)
    )
    info.write(worker_path(trial.directory, runner.rank))


def add_to_worker_file(trial: TrialConfig, rank: int, **extra: Any) -> None:
    """Add what a worker measured by the end of training to its ``rank<k>.json``: fields of
    :class:`~distmis.run_folder.WorkerInfo` (a name it lacks is a TypeError, not a new key)."""
    if not extra:
        return
    path = worker_path(trial.directory, rank)
    dataclasses.replace(WorkerInfo.read(path), **extra).write(path)


def write_result(
    trial: TrialConfig,
    *,
    started: float,
    fit_started: float,
    fit_ended: float,
    steps: TrialSteps,
    resumed_from_epoch: int,
    history: list[dict[str, float]],
) -> None:
    """``result.json`` of a finished trial (rank 0 only), after its model file is saved.

    ``metrics`` are the last epoch's; ``history`` every epoch this attempt trained, in order.
    Volumes trained: the epochs this attempt ran × ``steps_per_epoch`` × ``global_batch``.
    """
    epochs = trial.settings.epochs
    result = TrialResult(
        trial_id=trial.trial_id,
        backend=trial.settings.backend,
        start_time=started,
        fit_start_time=fit_started,
        end_time=time.time(),
        fit_seconds=fit_ended - fit_started,
        # Asked for → first training epoch: worker start, imports, data, model, restore.
        startup_seconds=fit_started
        - (trial.submitted_at if trial.submitted_at is not None else started),
        volumes_trained=(epochs - resumed_from_epoch) * steps.steps_per_epoch * steps.global_batch,
        epochs=epochs,
        resumed_from_epoch=resumed_from_epoch,
        metrics=dict(history[-1]) if history else {},
        history=tuple(dict(epoch) for epoch in history),
        devices=tuple(steps.devices),
    )
    # Whole or not at all: a trial with a result.json is finished, and a reader must never
    # see half of one (a kill mid-write of a plain write leaves a truncated file there).
    result.write(trial.directory / RESULT_FILE)
