"""The training run folder's contract: every file a run writes, its one writer and its one reader.

A run is one mode at one G: ``results/train/{backend}/{mode folder}/{G}gpu/`` (the mode folder
is ``data``, ``experiment`` or ``hybrid<k>``, :func:`distmis.modes.Mode.folder`). Training
(:mod:`distmis.trial`, :mod:`distmis.train`) writes these files only through this module; the
planner (:mod:`distmis.plan`), the scaling analysis (:mod:`distmis.scaling`) and evaluation
(:mod:`distmis.evaluate`) read them only through it. Each is a frozen dataclass with
``to_json``/``from_json`` whose JSON carries a ``format`` (``distmis-<name>/<version>``)::

    <run>/summary.json          RunSummary     distmis-run-summary/2     train.run → plan, scaling
    <run>/trials.csv            TrialRecord    distmis-trial-record/2    train.run → plan, scaling
    <run>/best_model.json       ModelCard      distmis-model-card/1      train.summary → evaluate
    <run>/run_state.json        RunState       distmis-run-state/1       train.run (resume or not)
    <run>/trials/<id>/record.json              TrialRecord               train.trials (rerun skips it)
    <run>/trials/<id>/result.json              TrialResult   distmis-trial-result/1   trial → train, plan
    <run>/trials/<id>/workers/rank<k>.json     WorkerInfo    distmis-trial-worker/1   trial → train, plan
    <run>/trials/<id>/epochs.jsonl             EpochRecord   distmis-trial-epoch/1    trial → train, plan, scaling
    <run>/trials/<id>/failed.json              FailedAttempt distmis-trial-failure/1  trial → train
    <run>/trials/<id>/attempts.log             (start times) distmis-trial-attempts/1 trial → train
    <checkpoint>/state.json                    CheckpointState distmis-checkpoint-state/1  trial → trial
    <run>/search.jsonl          SearchEvent    distmis-search-proposal/1 search → search (resume)

- ``summary.json``: the run as a whole (:class:`RunSummary`): backend, mode, runner,
  ``gpus_per_trial``, scheduler, the makespan and its ends, trial counts, the best trial, the
  resources asked for and seen, the run's settings, what the workers trained on, library
  versions, and ``train_volumes``/``val_volumes``, the split sizes it trained on (what the
  planner scales a step to an epoch with).
- ``trials.csv``: one :class:`TrialRecord` per configuration, sorted by trial id; the columns
  are :data:`TRIAL_COLUMNS`, the first is ``format``, on every row. ``record.json`` is the same
  record, written as a configuration finishes so a rerun does not train it again.
- ``best_model.json``: the best trial's :class:`ModelCard`: its backend, the model file beside it
  (``best_model.keras`` or ``best_model.pt``, relative to the card's folder), its trials.csv row,
  the architecture and the data it trained on. Written after the model: a card means a whole
  model.
- ``run_state.json``: whether a run finished and with which settings and data
  (``fingerprint``); an interrupted run with the same fingerprint is resumed. A state of
  another format is never resumed from: the run starts afresh, which also keeps an older
  DistMIS's trial files out of a new run.
- per trial: ``result.json`` (:class:`TrialResult`, rank 0, when it trained every epoch; its
  presence is what "finished" means), ``workers/rank<k>.json`` (:class:`WorkerInfo`, each
  worker of the last attempt), ``epochs.jsonl`` and ``attempts.log`` (below), ``failed.json``
  (:class:`FailedAttempt`, the first error of the last failed attempt).

- ``search.jsonl``: a random or TPE search's proposals as they happened
  (:class:`SearchEvent`, one line per ``ask`` and per ``tell``, each with its own ``format``),
  so an interrupted search resumes exactly where it stopped (:mod:`distmis.search`). A grid run
  has none.

Every JSON file is written whole or not at all (:func:`distmis.fileio.write_json`). The two
logs are appended to, one line per event, so a trial's history survives its retries:
``epochs.jsonl`` holds one :class:`EpochRecord` per validated epoch and every line carries its
own ``format`` (a line is a JSON object, so lines of two versions can never be mistaken for one
another); ``attempts.log`` starts with the line ``# distmis-trial-attempts/1``, which covers the
start times (one float per line) below it. Only rank 0 appends to either.

Reading: a missing file, a file that is not JSON, one of another format (an unversioned file
from an older DistMIS included), a missing or unknown key or a value of the wrong type raises
:class:`~distmis.errors.ContractError` in one line naming the file and the training rule that
writes it (the rule of the file's mode folder, else all of them). No key has a default: a field
that may be absent by design (a failed trial's metrics, a local run's Ray cluster) is an
explicit ``null`` (an empty cell in trials.csv).

This module imports only the standard library, :mod:`distmis.fileio`, :mod:`distmis.errors`,
:mod:`distmis.hparams` and :mod:`distmis.modes`, so every stage can import it.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from distmis import modes
from distmis.errors import ContractError
from distmis.fileio import atomic_path, read_json, write_json
from distmis.hparams import HYPERPARAMETERS, HParams
from distmis.hparams import NAMES as HPARAM_NAMES

# --- names --------------------------------------------------------------------------------

SUMMARY_FILE = "summary.json"
TRIALS_FILE = "trials.csv"
MODEL_CARD_FILE = "best_model.json"
RUN_STATE_FILE = "run_state.json"
TRIALS_DIR = "trials"
RECORD_FILE = "record.json"
RESULT_FILE = "result.json"
WORKERS_DIR = "workers"
EPOCHS_FILE = "epochs.jsonl"
FAILED_FILE = "failed.json"
ATTEMPTS_FILE = "attempts.log"
CHECKPOINT_STATE_FILE = "state.json"
RUN_FOLDER = re.compile(r"^(\d+)gpu$")

# How a trial ended, in trials.csv's ``status``: trained every epoch, failed after its
# retries, or stopped early by the scheduler (ASHA) with its last epoch's metrics.
STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_STOPPED = "stopped"
STATUSES = (STATUS_OK, STATUS_FAILED, STATUS_STOPPED)


def trial_folder(run_dir: Path, trial_id: str) -> Path:
    """``<run>/trials/<trial_id>``: the files one configuration leaves."""
    return Path(run_dir) / TRIALS_DIR / trial_id


def worker_path(trial_dir: Path, rank: int) -> Path:
    return Path(trial_dir) / WORKERS_DIR / f"rank{rank}.json"


def rule_for(path: Path) -> str:
    """The training rule that writes ``path``: the rule of the mode folder above its ``{G}gpu``
    folder, or every training rule when ``path`` is not inside a run folder."""
    parts = Path(path).parts
    for index in range(len(parts) - 1, 0, -1):
        if RUN_FOLDER.match(parts[index]):
            try:
                return modes.from_folder(parts[index - 1])[0].rule
            except ValueError:
                break
    return modes.ANY_RULE


# --- decoding: one strict reader for every file -------------------------------------------


def _decode(cls: type, payload: Any, names: Iterable[str] | None = None) -> Any:
    """An instance of dataclass ``cls`` from a JSON object holding exactly its fields (or
    ``names`` of them, the rest given as keyword arguments later); ValueError says which
    key or value is wrong, never fills in a default."""
    if not isinstance(payload, Mapping):
        raise ValueError(f"expected a JSON object, got {type(payload).__name__}")
    wanted = set(names) if names is not None else {f.name for f in fields(cls)}
    if set(payload) != wanted:
        raise ValueError(
            f"missing {sorted(wanted - set(payload))}, unknown {sorted(set(payload) - wanted)}"
        )
    hints = typing.get_type_hints(cls)
    values = {name: _value(hints[name], payload[name], name) for name in wanted}
    return values if names is not None else cls(**values)


def _value(kind: Any, value: Any, name: str) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return value
    if origin in (typing.Union, types.UnionType):  # ``X | None``: an explicit null
        if value is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _value(inner, value, name)
    if dataclasses.is_dataclass(kind):
        try:
            return _decode(kind, value)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    if origin is tuple:
        if not isinstance(value, list):
            raise ValueError(f"{name} must be a list, got {value!r}")
        return tuple(_value(args[0], item, name) for item in value)
    if origin in (Mapping, dict):
        if not isinstance(value, dict):
            raise ValueError(f"{name} must be an object, got {value!r}")
        return {str(k): _value(args[1], v, f"{name}.{k}") for k, v in value.items()}
    # bool is an int subclass: a true/false where a number belongs is a wrong field.
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind in (bool, str) and isinstance(value, kind):
        return value
    raise ValueError(f"{name} must be {getattr(kind, '__name__', kind)}, got {value!r}")


def _plain(value: Any) -> Any:
    """``value`` as JSON holds it: tuples as lists, so what is written is what is returned."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _check_format(payload: Any, expected: str) -> None:
    if not isinstance(payload, Mapping):
        raise ValueError(f"expected a JSON object of format {expected!r}")
    if "format" not in payload:
        raise ValueError(f"no format: written before {expected} (an older DistMIS)")
    if payload["format"] != expected:
        raise ValueError(f"format {payload['format']!r}, expected {expected!r}")


class _Versioned:
    """``to_json``/``from_json`` for a frozen dataclass of one format; ``read``/``write`` one
    file of it."""

    FORMAT: ClassVar[str]

    def to_json(self) -> dict[str, Any]:
        return {"format": self.FORMAT, **_plain(dataclasses.asdict(self))}

    @classmethod
    def from_json(cls, payload: Any):
        _check_format(payload, cls.FORMAT)
        return _decode(cls, {k: v for k, v in payload.items() if k != "format"})

    def write(self, path: Path) -> None:
        write_json(path, self.to_json())

    @classmethod
    def read(cls, path: Path):
        path = Path(path)
        return parse(cls, read_json(path, rule_for(path)), path)


def parse(cls: type, payload: Any, where: Path | str) -> Any:
    """``cls.from_json(payload)``, or a one-line ContractError naming ``where`` and its rule."""
    try:
        return cls.from_json(payload)
    except (KeyError, TypeError, ValueError) as exc:
        raise ContractError(f"{where}: {exc}; rerun {rule_for(Path(str(where)))}") from None


# --- the run ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BestTrial:
    """The configuration with the highest final ``val_dice`` among the ok trials."""

    trial_id: str
    hparams: Mapping[str, Any]  # HParams.to_dict(): a value per hyperparameter
    val_dice: float


@dataclass(frozen=True)
class RequestedResources:
    cpus: int
    gpus: int
    cpus_per_worker: int
    use_gpu: bool


@dataclass(frozen=True)
class Resources:
    requested: RequestedResources
    ray_cluster: Mapping[str, float] | None  # the Ray cluster's totals; None: the local runner
    cpus_visible_to_job: int  # this job's cgroup/affinity share, e.g. SLURM's
    slurm: Mapping[str, str]  # what SLURM gave the job; empty outside SLURM


@dataclass(frozen=True)
class WorkerDevice:
    """What one host's workers trained on: ``device_type`` gpu or cpu, and the card or CPU."""

    host: str
    device_type: str
    device_name: str


@dataclass(frozen=True)
class RunSearch:
    """How the run chose its configurations (``train.search``): ``algorithm`` grid, random or
    tpe; ``samples``, the configurations random search or TPE proposes (None: the grid, every
    combination); ``seed``, what seeded the proposals."""

    algorithm: str
    samples: int | None
    seed: int


@dataclass(frozen=True)
class RunSummary(_Versioned):
    """``summary.json``: one run of one mode at one G. Times are epoch seconds."""

    # /2: ``search``, how the configurations were chosen.
    FORMAT: ClassVar[str] = "distmis-run-summary/2"
    # Keys of ``settings`` (the run's TrainSettings) the planner reads.
    SETTINGS_READ: ClassVar[tuple[str, ...]] = ("epochs", "batch_size_per_replica")

    backend: str  # tensorflow | torch
    mode: str  # data | experiment | hybrid
    runner: str  # ray (Ray Train / Tune) | local (one process, no Ray)
    gpus_per_trial: int  # workers per configuration: G (data), 1 (experiment), k (hybrid)
    scheduler: str  # none | asha
    search: RunSearch
    startup_seconds: float  # every trial's "asked for → first training epoch", summed
    gpus: int
    workers: int
    nodes_seen: tuple[str, ...]
    node_count: int
    makespan_seconds: float  # before the first trial starts to after the last ends
    makespan_start: float
    makespan_end: float
    # A resumed run's makespan spans the interruption: not comparable with uninterrupted runs.
    resumed: bool
    trial_count: int
    ok_count: int
    failed_count: int
    stopped_count: int
    best: BestTrial | None  # None: no trial finished with a validation Dice
    resources: Resources
    settings: Mapping[str, Any]  # TrainSettings.to_json() of the run
    devices_seen: tuple[str, ...]  # what the frameworks listed
    worker_devices: tuple[WorkerDevice, ...]  # sorted, once per (host, type, name)
    versions: Mapping[str, str]  # python, ray when installed, the framework's
    train_volumes: int  # the split sizes the run trained and validated on
    val_volumes: int

    @classmethod
    def from_json(cls, payload: Any) -> RunSummary:
        summary = super().from_json(payload)
        for key in cls.SETTINGS_READ:
            if key not in summary.settings:
                raise ValueError(f"settings lacks {key}")
            value = summary.settings[key]
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"settings.{key} must be an integer, got {value!r}")
        return summary

    @property
    def epochs(self) -> int:
        return self.settings["epochs"]

    @property
    def batch_size_per_replica(self) -> int:
        return self.settings["batch_size_per_replica"]


@dataclass(frozen=True)
class TrialRecord(_Versioned):
    """One configuration: a row of ``trials.csv`` and its ``record.json``. Times are wall-clock
    epoch seconds, measured by the trial itself (rank 0, entering the training function to
    saving the model); a failed trial's metrics are None (an empty cell)."""

    # /2: ``proposal`` and ``proposed_time``, where the configuration came from in the search.
    FORMAT: ClassVar[str] = "distmis-trial-record/2"

    trial_id: str
    # The configuration: in trials.csv one column per hyperparameter (distmis.hparams.NAMES,
    # the table's order, numbers as numbers), in record.json one object.
    hparams: HParams
    # Its number in the search, in the order proposed (0-based; the grid's table order), and
    # when it was proposed (epoch seconds; a grid's or random search's whole list at once).
    proposal: int
    proposed_time: float
    lr_effective: float  # lr after optional linear scaling by the worker count
    epochs: int
    batch_size_per_replica: int
    global_batch_size: int
    workers: int
    status: str  # ok | failed | stopped
    start_time: float
    end_time: float
    seconds: float
    volumes_per_second: float  # training volumes processed / trial seconds
    train_loss: float | None
    train_dice: float | None
    val_loss: float | None
    val_dice: float | None
    node: str  # host(s) the trial's workers ran on, ';'-separated
    worker: str  # rank, process id and GPU id(s) per worker, e.g. "rank0:pid=123,gpu=0"
    attempts: int
    error: str  # the first line of the last error; empty unless failed
    epochs_run: int  # epochs validated (== epochs when ok; fewer when stopped or failed)
    startup_seconds: float | None  # asked for → first training epoch (None unless ok)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {self.status!r}")

    def to_row(self) -> dict[str, Any]:
        """The trials.csv row: the hyperparameters spread into their own columns."""
        fields_ = self.to_json()
        return {
            "format": fields_.pop("format"),
            "trial_id": fields_.pop("trial_id"),
            **fields_.pop("hparams"),
            **fields_,
        }

    @classmethod
    def from_row(cls, row: Mapping[str, str]) -> TrialRecord:
        """A trials.csv row (every value a string; empty: None) back into a record."""
        _check_format(row, cls.FORMAT)
        hints = typing.get_type_hints(cls)
        values = {}
        # csv.DictReader files extra cells under None and fills missing ones with None.
        if None in row or None in row.values():
            raise ValueError(f"a row of another width than the {len(TRIAL_COLUMNS)} columns")
        for name in TRIAL_COLUMNS[1:]:
            if name not in row:
                raise ValueError(f"no column {name}")
        for name in _RECORD_COLUMNS:
            values[name] = _cell(hints[name], row[name], name)
        values["hparams"] = HParams(
            **{h.name: _cell(h.type, row[h.name], h.name) for h in HYPERPARAMETERS}
        )
        return cls(**values)


_RECORD_COLUMNS = tuple(f.name for f in fields(TrialRecord) if f.name != "hparams")
TRIAL_COLUMNS = ("format", _RECORD_COLUMNS[0], *HPARAM_NAMES, *_RECORD_COLUMNS[1:])


def _cell(kind: Any, text: str, name: str) -> Any:
    """One trials.csv cell as its field's type (csv writes None as '' and bools as True/False)."""
    if typing.get_origin(kind) is types.UnionType:
        if text == "":
            return None
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    try:
        if kind is bool:
            return {"True": True, "False": False}[text]
        return kind(text) if kind in (int, float) else text
    except (KeyError, ValueError):
        raise ValueError(f"{name} must be {kind.__name__}, got {text!r}") from None


def write_trials(path: Path, records: Iterable[TrialRecord]) -> None:
    """``trials.csv`` whole (temp file, then rename), rows sorted by trial id."""
    rows = sorted((r.to_row() for r in records), key=lambda row: row["trial_id"])
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=TRIAL_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def read_trials(path: Path) -> list[TrialRecord]:
    """Every row of ``trials.csv``, in file order; the header must be :data:`TRIAL_COLUMNS`."""
    path = Path(path)
    rule = rule_for(path)
    if not path.is_file():
        raise ContractError(f"{path} is missing (it is written by {rule})")
    if path.stat().st_size == 0:
        raise ContractError(f"{path} is empty (0 bytes); rerun {rule}")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        header = tuple(reader.fieldnames or ())
        if header[:1] != ("format",):
            raise ContractError(
                f"{path}: no format column: written before {TrialRecord.FORMAT} (an older "
                f"DistMIS); rerun {rule}"
            )
        if header != TRIAL_COLUMNS:
            raise ContractError(
                f"{path}: columns {','.join(header)}, expected {','.join(TRIAL_COLUMNS)}; "
                f"rerun {rule}"
            )
        records = []
        # Line 1 is the header, so data row k sits on line k + 1.
        for line, row in enumerate(reader, start=2):
            try:
                records.append(TrialRecord.from_row(row))
            except ValueError as exc:
                raise ContractError(f"{path} line {line}: {exc}; rerun {rule}") from None
    return records


@dataclass(frozen=True)
class Architecture:
    depth: int
    base_filters: int
    norm: str


@dataclass(frozen=True)
class ModelCard(_Versioned):
    """``best_model.json``: the run's best model and where it came from."""

    FORMAT: ClassVar[str] = "distmis-model-card/1"

    backend: str
    model_file: str  # relative to the card's folder
    trial: TrialRecord  # its trials.csv row (without a format of its own: the card's covers it)
    model: Architecture
    tfrecord_dir: str  # the data it trained on, as the run recorded it

    def to_json(self) -> dict[str, Any]:
        payload = super().to_json()
        payload["trial"] = {k: v for k, v in self.trial.to_json().items() if k != "format"}
        return payload

    @classmethod
    def from_json(cls, payload: Any) -> ModelCard:
        _check_format(payload, cls.FORMAT)
        names = {f.name for f in fields(cls)}
        if set(payload) != names | {"format"}:
            raise ValueError(
                f"missing {sorted(names - set(payload))}, "
                f"unknown {sorted(set(payload) - names - {'format'})}"
            )
        rest = {k: v for k, v in payload.items() if k not in ("format", "trial")}
        values = _decode(cls, rest, names - {"trial"})
        if not isinstance(payload["trial"], Mapping):
            raise ValueError(f"trial must be an object, got {payload['trial']!r}")
        try:
            values["trial"] = TrialRecord.from_json(
                {**payload["trial"], "format": TrialRecord.FORMAT}
            )
        except ValueError as exc:
            raise ValueError(f"trial: {exc}") from None
        return cls(**values)

    def model_path(self, card_path: Path) -> Path:
        """The model file, resolved against the card's own folder (never the working one)."""
        return Path(card_path).parent / self.model_file


@dataclass(frozen=True)
class RunState(_Versioned):
    """``run_state.json``: which settings and data a run trains (``fingerprint``) and whether
    it finished; started is epoch seconds."""

    FORMAT: ClassVar[str] = "distmis-run-state/1"

    fingerprint: str
    complete: bool
    started: float


# --- one trial ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialResult(_Versioned):
    """``result.json``: a trial that trained every epoch (rank 0, after saving its model).

    ``metrics`` are the last epoch's (``loss``, ``dice``, ``dice_<channel>``, ``val_loss``,
    ``val_dice``, ``val_dice_<channel>``); ``history`` every epoch this attempt trained.
    Volumes trained: the epochs this attempt ran × steps per epoch × global batch.
    """

    FORMAT: ClassVar[str] = "distmis-trial-result/1"

    trial_id: str
    backend: str
    start_time: float  # entering the training function
    fit_start_time: float  # the first training epoch of this attempt
    end_time: float
    fit_seconds: float
    startup_seconds: float  # asked for → first training epoch
    volumes_trained: int
    epochs: int
    resumed_from_epoch: int
    metrics: Mapping[str, float]
    history: tuple[Mapping[str, float], ...]
    devices: tuple[str, ...]


@dataclass(frozen=True)
class WorkerInfo(_Versioned):
    """``workers/rank<k>.json``: one worker of a trial's last attempt, what it ran on and
    what it measured by the end (None until it finished, or when its backend does not)."""

    FORMAT: ClassVar[str] = "distmis-trial-worker/1"

    backend: str
    # Frameworks this worker process had loaded (a torch worker should not hold TensorFlow).
    frameworks_loaded: tuple[str, ...]
    rank: int
    world_size: int
    host: str
    pid: int
    gpu_ids: tuple[str, ...]  # CUDA_VISIBLE_DEVICES
    batch_size_per_replica: int
    global_batch_size: int
    steps_per_epoch: int
    devices: tuple[str, ...]  # what the framework lists
    device_type: str  # gpu | cpu: what it trained on
    device_name: str
    train_volumes_read: int | None  # torch: training volumes its batches held


def read_workers(trial_dir: Path) -> list[WorkerInfo]:
    """The worker files of a trial's last attempt, by rank (none when no worker started)."""
    found = sorted((Path(trial_dir) / WORKERS_DIR).glob("rank*.json"))
    return sorted((WorkerInfo.read(path) for path in found), key=lambda w: w.rank)


@dataclass(frozen=True)
class FailedAttempt(_Versioned):
    """``failed.json``: the last failed attempt's span and its first error (of a worker
    group, the rank that failed first, not the peers its failure took down)."""

    FORMAT: ClassVar[str] = "distmis-trial-failure/1"

    start_time: float
    end_time: float
    error: str


@dataclass(frozen=True)
class CheckpointState(_Versioned):
    """``state.json`` in every checkpoint a trial reports: the epochs done and whose they are
    (one Ray Train run trains many configurations in data mode)."""

    FORMAT: ClassVar[str] = "distmis-checkpoint-state/1"

    epoch: int
    trial_id: str


_TIMING = ("epoch", "time", "started", "train_seconds", "val_seconds")


@dataclass(frozen=True)
class EpochRecord:
    """One line of ``epochs.jsonl``: a validated epoch, as it happened (rank 0).

    ``epoch`` is 1-based; ``time`` is when its validation ended, ``started`` when its training
    began, ``train_seconds`` and ``val_seconds`` the two parts in between; ``metrics`` every
    metric of the epoch, ``val_dice`` among them (NaN where a model diverged). On disk the
    metrics sit beside the timing: ``{"format", "epoch", "time", ..., "val_dice", "loss", ...}``.
    """

    FORMAT: ClassVar[str] = "distmis-trial-epoch/1"

    epoch: int
    time: float
    started: float
    train_seconds: float
    val_seconds: float
    metrics: Mapping[str, float]

    def __post_init__(self) -> None:
        if self.epoch < 1:
            raise ValueError(f"epoch must be an integer >= 1, got {self.epoch!r}")

    def to_json(self) -> dict[str, Any]:
        clash = set(self.metrics) & {"format", *_TIMING}
        if clash:
            raise ValueError(f"a metric may not be called {sorted(clash)}")
        timing = {name: getattr(self, name) for name in _TIMING}
        return {"format": self.FORMAT, **timing, **self.metrics}

    @classmethod
    def from_json(cls, payload: Any) -> EpochRecord:
        _check_format(payload, cls.FORMAT)
        missing = [name for name in (*_TIMING, "val_dice") if name not in payload]
        if missing:
            raise ValueError(f"missing {missing}")
        timing = _decode(cls, {name: payload[name] for name in _TIMING}, _TIMING)
        metrics = {
            name: _value(float, value, name)
            for name, value in payload.items()
            if name not in ("format", *_TIMING)
        }
        return cls(**timing, metrics=metrics)

    @property
    def val_dice(self) -> float:
        return self.metrics["val_dice"]


def append_epoch(trial_dir: Path, record: EpochRecord) -> None:
    """Add one line to the trial's ``epochs.jsonl`` (one write of a whole line)."""
    line = json.dumps(record.to_json()) + "\n"
    with (Path(trial_dir) / EPOCHS_FILE).open("a") as fh:
        fh.write(line)


def read_epochs(trial_dir: Path) -> list[EpochRecord]:
    """The lines of a trial's ``epochs.jsonl`` in the order written (none when it has none:
    it failed before its first validation). A retried attempt's lines follow the first's."""
    path = Path(trial_dir) / EPOCHS_FILE
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            payload = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ContractError(
                f"{where} is not valid JSON ({exc}); rerun {rule_for(path)}"
            ) from None
        records.append(parse(EpochRecord, payload, where))
    return records


ATTEMPTS_FORMAT = "distmis-trial-attempts/1"
_ATTEMPTS_HEADER = f"# {ATTEMPTS_FORMAT}"


def log_attempt(trial_dir: Path, started: float) -> None:
    """Add an attempt's start time (epoch seconds) to ``attempts.log``; the first one also
    writes the format line."""
    path = Path(trial_dir) / ATTEMPTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "" if path.is_file() and path.stat().st_size else _ATTEMPTS_HEADER + "\n"
    with path.open("a") as fh:
        fh.write(f"{header}{started!r}\n")


def read_attempts(trial_dir: Path) -> tuple[float, ...]:
    """Every attempt's start time, in order (none when the trial never started)."""
    path = Path(trial_dir) / ATTEMPTS_FILE
    if not path.is_file():
        return ()
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if not lines or lines[0] != _ATTEMPTS_HEADER:
        raise ContractError(
            f"{path}: no {_ATTEMPTS_HEADER!r} line: written before {ATTEMPTS_FORMAT} (an older "
            f"DistMIS); rerun {rule_for(path)}"
        )
    try:
        return tuple(float(line) for line in lines[1:])
    except ValueError as exc:
        raise ContractError(f"{path}: {exc}; rerun {rule_for(path)}") from None


def read_if_present(cls: type, path: Path) -> Any:
    """``cls.read(path)``, or None when there is no such file (a trial that never got there)."""
    return cls.read(path) if Path(path).is_file() else None


# --- the search's record ------------------------------------------------------------------

SEARCH_FILE = "search.jsonl"
SEARCH_EVENTS = ("ask", "tell")
# How a told proposal ended, as Optuna's TrialState names it: trained (a value), stopped early
# by the scheduler (its last value) or failed (no value).
SEARCH_STATES = ("COMPLETE", "PRUNED", "FAIL")


@dataclass(frozen=True)
class SearchEvent(_Versioned):
    """One line of ``search.jsonl``: the search proposed configuration ``number`` (``ask``,
    with its ``params``, written before it trains) or learnt how it did (``tell``, with its
    ``value``, ``state`` and the validation Dice of each epoch it reported, ``steps``), at
    ``time`` (epoch seconds; an ask's is the proposal's ``proposed_time``, which a resumed
    search keeps). The fields an event does not have are ``null``."""

    FORMAT: ClassVar[str] = "distmis-search-proposal/1"

    event: str
    number: int
    time: float
    params: Mapping[str, Any] | None
    value: float | None
    state: str | None
    steps: Mapping[str, float] | None

    def __post_init__(self) -> None:
        if self.event not in SEARCH_EVENTS:
            raise ValueError(f"event must be one of {SEARCH_EVENTS}, got {self.event!r}")
        if self.number < 0:
            raise ValueError(f"number must be >= 0, got {self.number}")
        if (self.params is None) != (self.event == "tell"):
            raise ValueError(
                f"params: an {self.event} event {'has' if self.event == 'ask' else 'has no'} params"
            )
        if self.event == "tell" and self.state not in SEARCH_STATES:
            raise ValueError(f"state must be one of {SEARCH_STATES}, got {self.state!r}")
        if self.event == "ask" and (self.value, self.state, self.steps) != (None, None, None):
            raise ValueError("an ask event has no value, state or steps")

    @classmethod
    def ask(cls, number: int, params: Mapping[str, Any], time: float) -> SearchEvent:
        return cls("ask", number, time, dict(params), None, None, None)

    @classmethod
    def tell(
        cls,
        number: int,
        value: float | None,
        state: str,
        steps: Mapping[int, float] | None = None,
        time: float | None = None,
    ) -> SearchEvent:
        """``time``: when it was told (None: now)."""
        import time as clock

        plain_steps = {str(step): float(v) for step, v in (steps or {}).items()}
        told = clock.time() if time is None else time
        return cls("tell", number, told, None, value, state, plain_steps)


def append_search_event(run_dir: Path, event: SearchEvent) -> None:
    """Add one line to the run's ``search.jsonl`` (one write of a whole line, flushed to disk
    before training goes on: the record must hold every proposal that may have trained)."""
    import os

    path = Path(run_dir) / SEARCH_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json.dumps(event.to_json()) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def rewrite_search_events(run_dir: Path, events: Sequence[SearchEvent]) -> None:
    """Replace the run's ``search.jsonl`` with ``events`` at once (atomically)."""
    with atomic_path(Path(run_dir) / SEARCH_FILE) as tmp:
        tmp.write_text("".join(json.dumps(e.to_json()) + "\n" for e in events))


def read_search_events(run_dir: Path) -> list[SearchEvent]:
    """The lines of the run's ``search.jsonl`` in the order written (none without the file).
    A last line without its newline was being written when the run died: it is left out (the
    proposal it held never trained); any other bad line is a ContractError."""
    path = Path(run_dir) / SEARCH_FILE
    if not path.is_file():
        return []
    text = path.read_text()
    lines = text.split("\n")
    if lines and lines[-1] and not text.endswith("\n"):
        lines = lines[:-1]  # torn: the run died in the middle of this write
    events = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            payload = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ContractError(
                f"{where} is not valid JSON ({exc}); rerun {rule_for(path)}"
            ) from None
        events.append(parse(SearchEvent, payload, where))
    return events
