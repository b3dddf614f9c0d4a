"""Typed, validated access to the training timings: ``trials.csv`` and ``summary.json``.

One :class:`Run` per ``{backend}/{mode}/{G}gpu`` folder (the workflow's
``results/train/{backend}/{mode}/{G}gpu``, where the mode folder is ``data``, ``experiment``
or ``hybrid{k}``), read through the run folder's contract (:mod:`distmis.run_folder`).
Anything missing, malformed or of another format raises
:class:`~distmis.errors.ContractError` naming the file and the rule that writes it, so a
broken run stops the analysis instead of becoming a silently wrong plot.

A series of runs to compare is one value of :data:`SERIES`: the backend, the mode label
(``data``, ``experiment`` or ``hybrid{k}``: each k of hybrid mode is its own curve, as it
splits the GPUs differently) and the search that chose the configurations (``grid``, or
``random×8``, ``tpe×8``: a random search of 8 configurations trains other work than the
grid, so its runs are never compared with the grid's).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path

from distmis import backends, modes, run_folder
from distmis.errors import ContractError
from distmis.run_folder import (
    RUN_FOLDER,
    STATUS_FAILED,
    STATUS_OK,
    STATUS_STOPPED,
    SUMMARY_FILE,
    TRIALS_FILE,
    TrialRecord,
)

log = logging.getLogger(__name__)

SUMMARY_NAME = SUMMARY_FILE
TRIALS_NAME = TRIALS_FILE
DEFAULT_BACKEND = "tensorflow"  # drawn plainest in the figures
SCHEDULERS = ("none", "asha")
RUN_DIR_PATTERN = RUN_FOLDER
GRID_SEARCH = "grid"


def made_by(mode: str) -> str:
    """The rule (or, for an unknown mode, the rules) that writes a run's files.

    ``mode`` is a summary's mode or a mode folder's name (``hybrid2`` is hybrid's).
    """
    if mode in modes.MODES:
        return modes.MODES[mode].rule
    try:
        return modes.from_folder(mode)[0].rule
    except ValueError:
        return " or ".join(m.rule for m in modes.MODES.values())


def mode_label(mode: str, gpus_per_trial: int) -> str:
    """The series a run belongs to and the folder it sits in: data, experiment or hybrid{k}."""
    return modes.label(mode, gpus_per_trial)


def search_label(algorithm: str, samples: int | None) -> str:
    """How a run chose its configurations, as scaling.csv's ``search`` column and the legends
    write it: ``grid``, or the algorithm and the configurations it proposed (``random×8``,
    ``tpe×8``). The seed is left out: two runs differing only in it are replicates of one
    series, not two series."""
    if algorithm == GRID_SEARCH or samples is None:
        return algorithm
    return f"{algorithm}×{samples}"


def _finite(value: float, what: str, path: Path, rule: str) -> float:
    if not math.isfinite(value):
        raise ContractError(f"{path}: {what} must be a finite number, got {value!r}; rerun {rule}")
    return value


def _checked_gpus(summary: run_folder.RunSummary, path: Path, rule: str) -> bool:
    """``use_gpu`` of the run, refused when it says GPUs and its workers trained elsewhere:
    such a run's speedups would be CPU timings filed as GPU ones."""
    use_gpu = summary.resources.requested.use_gpu
    if not use_gpu:
        return use_gpu
    elsewhere = sorted(
        f"{d.host} ({d.device_type}: {d.device_name})"
        for d in summary.worker_devices
        if d.device_type != "gpu"
    )
    if elsewhere:
        raise ContractError(
            f"{path}: use_gpu is true but workers trained off the GPU on {', '.join(elsewhere)}; "
            f"rerun {rule} where `distmis preflight` passes"
        )
    return use_gpu


def _gpus_per_trial(value: int, mode: str, gpus: int, path: Path, rule: str) -> int:
    """The workers one configuration trains on: G (data), 1 (experiment), k (hybrid); one
    that contradicts its mode is a broken summary."""
    spec = modes.get(mode)
    expected = None if spec.takes_k else spec.workers_per_trial(gpus)
    if value < 1:
        raise ContractError(
            f"{path}: gpus_per_trial must be an integer >= 1, got {value!r}; rerun {rule}"
        )
    if expected is not None and value != expected:
        raise ContractError(
            f"{path}: gpus_per_trial={value} but a {mode}-parallel run on {gpus} GPUs trains "
            f"each configuration on {expected}; rerun {rule}"
        )
    if spec.takes_k and (value < 2 or gpus % value):
        raise ContractError(
            f"{path}: {mode} gpus_per_trial={value} must be >= 2 and divide gpus={gpus}; "
            f"rerun {rule}"
        )
    return value


def _scheduler(scheduler: str, path: Path, rule: str) -> str:
    if scheduler not in SCHEDULERS:
        raise ContractError(
            f"{path}: scheduler must be one of {', '.join(SCHEDULERS)}, got {scheduler!r}; "
            f"rerun {rule}"
        )
    return scheduler


@dataclass(frozen=True)
class RunSummary:
    """What the analysis needs from one ``summary.json``. Times are epoch seconds."""

    path: Path
    backend: str
    mode: str  # data | experiment | hybrid
    gpus: int
    gpus_per_trial: int  # G (data), 1 (experiment), k (hybrid)
    makespan_seconds: float
    makespan_start: float
    makespan_end: float
    resumed: bool  # the makespan then spans the interruption: not comparable as is
    trial_count: int
    best_trial_id: str | None
    best_val_dice: float | None  # None when no trial finished with a validation Dice
    uses_gpus: bool  # resources.requested.use_gpu; False: G counts CPU workers
    # ray, or local (one process, no Ray start-up: not comparable with a Ray run's makespan).
    runner: str
    scheduler: str  # none | asha (early stopping)
    # Every trial's "asked for → first training epoch", summed.
    startup_seconds: float
    search: str  # grid | {algorithm}×{samples}: see search_label

    @property
    def mode_label(self) -> str:
        """data, experiment or hybrid{k}: the series and the folder of this run."""
        return mode_label(self.mode, self.gpus_per_trial)

    @classmethod
    def from_json(cls, path: Path) -> RunSummary:
        """Read ``path`` (its contract, :class:`distmis.run_folder.RunSummary`) and check it
        describes a run this analysis can compare."""
        summary = run_folder.RunSummary.read(path)
        mode = summary.mode
        if mode not in modes.MODES:
            raise ContractError(
                f"{path}: mode must be one of {', '.join(modes.NAMES)}, got {mode!r}; "
                f"rerun {run_folder.rule_for(path)}"
            )
        rule = made_by(mode)
        gpus = summary.gpus
        if gpus < 1:
            raise ContractError(f"{path}: gpus must be an integer >= 1, got {gpus!r}; rerun {rule}")
        makespan = _finite(summary.makespan_seconds, "makespan_seconds", path, rule)
        if makespan <= 0:
            raise ContractError(f"{path}: makespan_seconds must be > 0, got {makespan}")
        best = summary.best
        return cls(
            path=path,
            backend=summary.backend,
            mode=mode,
            gpus=gpus,
            gpus_per_trial=_gpus_per_trial(summary.gpus_per_trial, mode, gpus, path, rule),
            makespan_seconds=makespan,
            makespan_start=_finite(summary.makespan_start, "makespan_start", path, rule),
            makespan_end=_finite(summary.makespan_end, "makespan_end", path, rule),
            resumed=summary.resumed,
            trial_count=summary.trial_count,
            best_trial_id=None if best is None else best.trial_id,
            best_val_dice=None
            if best is None
            else _finite(best.val_dice, "best.val_dice", path, rule),
            uses_gpus=_checked_gpus(summary, path, rule),
            runner=summary.runner,
            scheduler=_scheduler(summary.scheduler, path, rule),
            startup_seconds=_finite(summary.startup_seconds, "startup_seconds", path, rule),
            search=search_label(summary.search.algorithm, summary.search.samples),
        )


# The one home of what makes a series (a line in every figure, the runs one speedup compares):
# each column of scaling.csv's series key, in order, and how a run's summary gives its value.
# A new dimension is one entry here (its legend wording: style.SERIES_WORDS).
SERIES: dict[str, Callable[[RunSummary], str]] = {
    "backend": attrgetter("backend"),
    "mode": attrgetter("mode_label"),  # data | experiment | hybrid{k}
    "search": attrgetter("search"),  # grid | random×8 | tpe×8
    # none | asha: early stopping trains less of each configuration, so a search with it is
    # other work than the same search without (and the demo study compares the two).
    "scheduler": attrgetter("scheduler"),
}
SERIES_COLUMNS = tuple(SERIES)


@dataclass(frozen=True)
class TrialTiming:
    """One ``trials.csv`` row, reduced to timing, status and the validation Dice."""

    trial_id: str
    status: str  # "ok" | "failed" | "stopped" (early, by ASHA: fewer epochs, real metrics)
    start_time: float  # epoch seconds, measured by the trial itself
    end_time: float
    seconds: float
    volumes_per_second: float  # training volumes / seconds, as trials.csv defines it
    workers: int  # ranks one trial used: G in data mode, 1 in experiment mode, k in hybrid
    val_dice: float | None  # None: a failed trial (no metrics)
    epochs_run: int  # epochs validated (fewer than asked when stopped)
    startup_seconds: float | None  # asked for → first training epoch; None unless ok

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    @property
    def stopped(self) -> bool:
        return self.status == STATUS_STOPPED

    @property
    def failed(self) -> bool:
        return self.status == STATUS_FAILED

    @property
    def volumes_trained(self) -> float:
        """Training volumes this trial processed (all ranks), recovered from its rate."""
        return self.volumes_per_second * self.seconds

    @classmethod
    def from_csv(cls, path: Path) -> tuple[TrialTiming, ...]:
        """Every row of ``path`` (its contract: :func:`distmis.run_folder.read_trials`); a
        header-only file, or a row whose times cannot be, is a contract error."""
        rule = run_folder.rule_for(path)
        records = run_folder.read_trials(path)
        if not records:
            raise ContractError(f"{path} has a header but no trial rows; rerun {rule}")
        # Line 1 is the header, so data row k sits on line k + 1.
        return tuple(
            cls._from_record(record, f"{path} line {line}", rule)
            for line, record in enumerate(records, start=2)
        )

    @classmethod
    def _from_record(cls, record: TrialRecord, where: str, rule: str) -> TrialTiming:
        for column in ("start_time", "end_time", "seconds", "volumes_per_second"):
            if not math.isfinite(getattr(record, column)):
                raise ContractError(
                    f"{where}: {column} must be finite, got {getattr(record, column)}"
                )
        if record.epochs_run < 0:
            raise ContractError(f"{where}: epochs_run must be >= 0, got {record.epochs_run}")
        if record.end_time < record.start_time:
            raise ContractError(
                f"{where}: end_time {record.end_time} is before start_time {record.start_time}; "
                f"rerun {rule}"
            )
        return cls(
            trial_id=record.trial_id,
            status=record.status,
            start_time=record.start_time,
            end_time=record.end_time,
            seconds=record.seconds,
            volumes_per_second=record.volumes_per_second,
            workers=record.workers,
            val_dice=record.val_dice,
            epochs_run=record.epochs_run,
            startup_seconds=record.startup_seconds,
        )


@dataclass(frozen=True)
class Run:
    """One training run: the whole grid in one mode on G GPUs."""

    directory: Path
    summary: RunSummary
    trials: tuple[TrialTiming, ...]

    @property
    def series(self) -> tuple[str, ...]:
        """The series (:data:`SERIES`: backend, mode label, search) whose runs form one
        speedup curve; hybrid{k} per k."""
        return tuple(value(self.summary) for value in SERIES.values())

    @property
    def gpus(self) -> int:
        return self.summary.gpus

    @classmethod
    def from_dir(cls, directory: Path) -> Run:
        """Load ``{backend}/{mode folder}/{G}gpu/`` and check its files describe that run."""
        directory = Path(directory)
        mode_hint = directory.parent.name
        rule = made_by(mode_hint)
        summary_path, trials_path = directory / SUMMARY_NAME, directory / TRIALS_NAME
        present = {p.name for p in (summary_path, trials_path) if p.is_file()}
        if len(present) == 1:
            absent = (summary_path if TRIALS_NAME in present else trials_path).name
            raise ContractError(
                f"{directory / absent} is missing but {directory / present.pop()} exists: "
                f"the run did not finish; rerun {rule}"
            )
        summary = RunSummary.from_json(summary_path)
        trials = TrialTiming.from_csv(trials_path)
        _check_consistent(directory, summary, trials)
        if summary.resumed:
            log.warning(
                "%s is a resumed run: its makespan spans the interruption, so its speedup "
                "is not comparable with uninterrupted runs (flagged in the table)",
                summary_path,
            )
        return cls(directory=directory, summary=summary, trials=trials)


def _check_consistent(directory: Path, summary: RunSummary, trials: Sequence[TrialTiming]) -> None:
    rule = made_by(summary.mode)
    folder = RUN_DIR_PATTERN.match(directory.name)
    if folder and int(folder.group(1)) != summary.gpus:
        raise ContractError(
            f"{summary.path} says gpus={summary.gpus} but sits in {directory.name}/; rerun {rule}"
        )
    folder_mode = directory.parent.name
    try:
        folder_spec, _ = modes.from_folder(folder_mode)
    except ValueError:
        folder_spec = None  # not a mode folder (a run copied elsewhere): nothing to compare
    if folder_spec is not None and folder_mode != summary.mode_label:
        if folder_spec.name == summary.mode and folder_spec.takes_k:
            # The folder's k and the summary's k disagree: which GPUs a trial had is unknown.
            raise ContractError(
                f"{summary.path} says gpus_per_trial={summary.gpus_per_trial} but sits in "
                f"{folder_mode}/ (expected {summary.mode_label}/); rerun {rule}"
            )
        raise ContractError(
            f"{summary.path} says mode={summary.mode_label} but sits in {folder_mode}/; "
            f"rerun {rule}"
        )
    backend_folder = directory.parent.parent.name
    if backend_folder in backends.NAMES and backend_folder != summary.backend:
        raise ContractError(
            f"{summary.path} says backend={summary.backend} but sits in {backend_folder}/; "
            f"rerun {rule}"
        )
    if summary.trial_count != len(trials):
        raise ContractError(
            f"{summary.path} counts {summary.trial_count} trials but "
            f"{directory / TRIALS_NAME} has {len(trials)} rows: the two files are from "
            f"different runs; rerun {rule}"
        )


def run_dirs(results_dir: Path) -> list[Path]:
    """Every ``{backend}/{mode folder}/{G}gpu`` under ``results_dir`` holding a contract file."""
    results_dir = Path(results_dir)
    found = []
    for directory in sorted(results_dir.glob("*/*/*gpu")):
        if not (directory.is_dir() and RUN_DIR_PATTERN.match(directory.name)):
            continue
        if (directory / SUMMARY_NAME).exists() or (directory / TRIALS_NAME).exists():
            found.append(directory)
        else:
            # A folder with neither file is a run that never got to write results.
            log.warning("skipping %s: no %s or %s in it", directory, SUMMARY_NAME, TRIALS_NAME)
    for directory in sorted(results_dir.glob("*/*gpu")):
        # Runs from before backends had folders of their own were all TensorFlow's.
        if directory.parent.name in modes.MODES and RUN_DIR_PATTERN.match(directory.name):
            log.warning(
                "skipping %s: runs now live in {backend}/{mode}/{G}gpu; move it to %s",
                directory,
                results_dir / DEFAULT_BACKEND / directory.parent.name / directory.name,
            )
    return found


def load_runs(results_dir: Path | None = None, directories: Sequence[Path] = ()) -> list[Run]:
    """The runs in ``directories``, or else every run under ``results_dir``; sorted by series, G.

    The workflow passes ``directories`` (exactly the runs the config asks for), so a stale
    folder from an older config never sneaks into the figures.
    """
    if not directories:
        if results_dir is None:
            raise ValueError("give results_dir or directories")
        directories = run_dirs(results_dir)
        if not directories:
            raise ContractError(
                f"no {{backend}}/{{mode}}/{{G}}gpu/{SUMMARY_NAME} under {results_dir}: run "
                f"the training rules ({', '.join(m.rule for m in modes.MODES.values())}) first"
            )
    runs = [Run.from_dir(Path(d)) for d in directories]
    seen: dict[tuple, Path] = {}
    for run in runs:
        key = (*run.series, run.gpus)
        if key in seen:
            same = " ".join(f"{c}={v}" for c, v in zip((*SERIES_COLUMNS, "G"), key, strict=True))
            raise ContractError(
                f"{run.directory} and {seen[key]} are both {same}: one "
                f"({', '.join(SERIES_COLUMNS)}, G) may have only one run"
            )
        seen[key] = run.directory
    return sorted(runs, key=lambda r: (*r.series, r.gpus))
