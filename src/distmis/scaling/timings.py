"""Typed, validated access to the training timings: ``trials.csv`` and ``summary.json``.

One :class:`Run` per ``{backend}/{mode}/{G}gpu`` folder (the workflow's
``results/train/{backend}/{mode}/{G}gpu``, where the mode folder is ``data``, ``experiment``
or ``hybrid{k}``). Anything missing or malformed raises
:class:`~distmis.errors.ContractError` naming the file and the rule that writes it, so a
broken run stops the analysis instead of becoming a silently wrong plot.

``summary.json`` carries a ``backend`` key; a summary without one is TensorFlow's, the only
backend before that key existed. Its ``gpus_per_trial`` (G in data mode, 1 in experiment
mode, k in hybrid mode) is derived for summaries from before the key existed, which were
never hybrid. A series of runs to compare is a (backend, mode label) pair, the label being
``data``, ``experiment`` or ``hybrid{k}``: each k of hybrid mode is its own curve, as it
splits the GPUs differently.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distmis import backends, modes
from distmis.errors import ContractError
from distmis.trial import STATUS_FAILED, STATUS_OK, STATUS_STOPPED, STATUSES

log = logging.getLogger(__name__)

SUMMARY_NAME = "summary.json"
TRIALS_NAME = "trials.csv"
DEFAULT_BACKEND = "tensorflow"
SCHEDULERS = ("none", "asha")
RUN_DIR_PATTERN = re.compile(r"^(\d+)gpu$")

# Only the columns this analysis reads: other trials.csv columns may come and go freely.
REQUIRED_TRIAL_COLUMNS = (
    "trial_id",
    "status",
    "start_time",
    "end_time",
    "seconds",
    "volumes_per_second",
    "workers",
    "val_dice",
)
REQUIRED_SUMMARY_KEYS = (
    "mode",
    "gpus",
    "makespan_seconds",
    "makespan_start",
    "makespan_end",
    "resumed",
    "trial_count",
    "best",
)


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


def _number(value: Any, what: str, path: Path, rule: str) -> float:
    # bool is an int subclass; a true/false here is a wrong field, not a number.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ContractError(f"{path}: {what} must be a finite number, got {value!r}; rerun {rule}")
    return float(value)


def _requested_gpus(payload: Mapping[str, Any]) -> bool | None:
    # Only labels depend on it (GPUs vs CPU workers), so an older or foreign summary
    # without it is still usable: None means "not recorded".
    requested = (payload.get("resources") or {}).get("requested") or {}
    use_gpu = requested.get("use_gpu")
    return use_gpu if isinstance(use_gpu, bool) else None


def _checked_gpus(payload: Mapping[str, Any], path: Path, rule: str) -> bool | None:
    """``use_gpu`` of the run, refused when it says GPUs and its workers trained elsewhere:
    such a run's speedups would be CPU timings filed as GPU ones."""
    use_gpu = _requested_gpus(payload)
    if not use_gpu:
        return use_gpu
    devices = payload.get("worker_devices")
    if devices is None:
        raise ContractError(
            f"{path}: use_gpu is true but the run does not record what its workers trained on "
            f"(worker_devices; summaries before it could not tell a CPU fallback); rerun {rule}"
        )
    elsewhere = sorted(
        f"{d.get('host')} ({d.get('device_type')}: {d.get('device_name')})"
        for d in devices
        if d.get("device_type") != "gpu"
    )
    if elsewhere:
        raise ContractError(
            f"{path}: use_gpu is true but workers trained off the GPU on {', '.join(elsewhere)}; "
            f"rerun {rule} where `distmis preflight` passes"
        )
    return use_gpu


def _gpus_per_trial(payload: Mapping[str, Any], mode: str, gpus: int, path: Path, rule: str) -> int:
    """The workers one configuration trains on: G (data), 1 (experiment), k (hybrid).

    Summaries from before the key were data or experiment runs, so it is derived for those;
    a hybrid run's k cannot be, and one that contradicts its mode is a broken summary.
    """
    spec = modes.get(mode)
    expected = None if spec.takes_k else spec.workers_per_trial(gpus)
    if "gpus_per_trial" not in payload:
        if expected is None:
            raise ContractError(f"{path} lacks gpus_per_trial (hybrid mode's k); rerun {rule}")
        return expected
    value = payload["gpus_per_trial"]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
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


def _scheduler(payload: Mapping[str, Any], path: Path, rule: str) -> str:
    # Summaries from before early stopping ran every trial to the end.
    scheduler = payload.get("scheduler", "none")
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
    uses_gpus: bool | None  # resources.requested.use_gpu; False: G counts CPU workers
    # ray, or local (one process, no Ray start-up: not comparable with a Ray run's makespan).
    runner: str = "ray"
    scheduler: str = "none"  # none | asha (early stopping)
    # Every trial's "asked for → first training epoch", summed; None when not recorded.
    startup_seconds: float | None = None

    @property
    def mode_label(self) -> str:
        """data, experiment or hybrid{k}: the series and the folder of this run."""
        return mode_label(self.mode, self.gpus_per_trial)

    @classmethod
    def from_json(cls, path: Path, mode_hint: str | None = None) -> RunSummary:
        """Read and check ``path``; ``mode_hint`` (the folder's mode) names the rule in errors."""
        rule = made_by(mode_hint or "")
        if not path.is_file():
            raise ContractError(f"{path} is missing (it is written by {rule})")
        try:
            payload = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ContractError(f"{path} is not valid JSON ({exc}); rerun {rule}") from exc
        if not isinstance(payload, Mapping):
            raise ContractError(f"{path}: expected a JSON object, got {type(payload).__name__}")
        missing = [key for key in REQUIRED_SUMMARY_KEYS if key not in payload]
        if missing:
            raise ContractError(f"{path} lacks {', '.join(missing)}; rerun {rule}, which writes it")
        mode = payload["mode"]
        if mode not in modes.MODES:
            raise ContractError(
                f"{path}: mode must be one of {', '.join(modes.NAMES)}, got {mode!r}; rerun {rule}"
            )
        rule = made_by(mode)
        gpus = payload["gpus"]
        if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
            raise ContractError(f"{path}: gpus must be an integer >= 1, got {gpus!r}; rerun {rule}")
        startup = payload.get("startup_seconds")
        makespan = _number(payload["makespan_seconds"], "makespan_seconds", path, rule)
        if makespan <= 0:
            raise ContractError(f"{path}: makespan_seconds must be > 0, got {makespan}")
        if not isinstance(payload["resumed"], bool):
            raise ContractError(
                f"{path}: resumed must be true or false, got {payload['resumed']!r}"
            )
        best = payload["best"]
        if best is not None and not isinstance(best, Mapping):
            raise ContractError(f"{path}: best must be an object or null, got {best!r}")
        best_dice = None
        if best is not None and best.get("val_dice") is not None:
            best_dice = _number(best["val_dice"], "best.val_dice", path, rule)
        return cls(
            path=path,
            backend=str(payload.get("backend", DEFAULT_BACKEND)),
            mode=mode,
            gpus=gpus,
            gpus_per_trial=_gpus_per_trial(payload, mode, gpus, path, rule),
            makespan_seconds=makespan,
            makespan_start=_number(payload["makespan_start"], "makespan_start", path, rule),
            makespan_end=_number(payload["makespan_end"], "makespan_end", path, rule),
            resumed=payload["resumed"],
            trial_count=int(_number(payload["trial_count"], "trial_count", path, rule)),
            best_trial_id=None if best is None else str(best.get("trial_id")),
            best_val_dice=best_dice,
            uses_gpus=_checked_gpus(payload, path, rule),
            runner=str(payload.get("runner", "ray")),  # older summaries: always Ray
            scheduler=_scheduler(payload, path, rule),
            startup_seconds=None
            if startup is None
            else _number(startup, "startup_seconds", path, rule),
        )


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
    val_dice: float | None
    # Columns newer than the rest: None in a trials.csv from before them (or left empty).
    epochs_run: int | None = None  # epochs validated (fewer than asked when stopped)
    startup_seconds: float | None = None  # asked for → first training epoch

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
    def from_csv(cls, path: Path, mode_hint: str | None = None) -> tuple[TrialTiming, ...]:
        """Every row of ``path``; an absent, empty or header-only file is a contract error."""
        rule = made_by(mode_hint or "")
        if not path.is_file():
            raise ContractError(f"{path} is missing (it is written by {rule})")
        if path.stat().st_size == 0:
            raise ContractError(f"{path} is empty (0 bytes); rerun {rule}")
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            missing = [c for c in REQUIRED_TRIAL_COLUMNS if c not in header]
            if missing:
                raise ContractError(
                    f"{path} lacks column(s) {', '.join(missing)} (header: {','.join(header)}); "
                    f"rerun {rule}"
                )
            # Line 1 is the header, so data row k sits on line k + 1.
            trials = tuple(
                cls._from_row(row, path, line, rule) for line, row in enumerate(reader, start=2)
            )
        if not trials:
            raise ContractError(f"{path} has a header but no trial rows; rerun {rule}")
        return trials

    @classmethod
    def _from_row(cls, row: Mapping[str, str], path: Path, line: int, rule: str) -> TrialTiming:
        where = f"{path} line {line}"
        status = row["status"]
        if status not in STATUSES:
            raise ContractError(
                f"{where}: status must be ok, failed or stopped, got {status!r}; rerun {rule}"
            )

        def number(column: str) -> float:
            try:
                value = float(row[column])
            except (TypeError, ValueError):
                raise ContractError(
                    f"{where}: {column} must be a number, got {row[column]!r}; rerun {rule}"
                ) from None
            if not math.isfinite(value):
                raise ContractError(f"{where}: {column} must be finite, got {value}")
            return value

        def optional_number(column: str) -> float | None:
            # A column newer than the file is absent; a value the trial did not measure, empty.
            return None if row.get(column) in ("", None) else number(column)

        epochs_run = optional_number("epochs_run")
        if epochs_run is not None and (epochs_run < 0 or epochs_run != int(epochs_run)):
            raise ContractError(
                f"{where}: epochs_run must be a whole number >= 0, got {row['epochs_run']!r}"
            )
        start, end = number("start_time"), number("end_time")
        if end < start:
            raise ContractError(f"{where}: end_time {end} is before start_time {start}")
        return cls(
            trial_id=row["trial_id"],
            status=status,
            start_time=start,
            end_time=end,
            seconds=number("seconds"),
            volumes_per_second=number("volumes_per_second"),
            workers=int(number("workers")),
            # A failed trial has no metrics: the column is then empty.
            val_dice=optional_number("val_dice"),
            epochs_run=None if epochs_run is None else int(epochs_run),
            startup_seconds=optional_number("startup_seconds"),
        )


@dataclass(frozen=True)
class Run:
    """One training run: the whole grid in one mode on G GPUs."""

    directory: Path
    summary: RunSummary
    trials: tuple[TrialTiming, ...]

    @property
    def series(self) -> tuple[str, str]:
        """The (backend, mode label) whose runs form one speedup curve; hybrid{k} per k."""
        return (self.summary.backend, self.summary.mode_label)

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
        summary = RunSummary.from_json(summary_path, mode_hint)
        trials = TrialTiming.from_csv(trials_path, mode_hint)
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
    seen: dict[tuple[str, str, int], Path] = {}
    for run in runs:
        key = (*run.series, run.gpus)
        if key in seen:
            raise ContractError(
                f"{run.directory} and {seen[key]} are both backend={key[0]} mode={key[1]} "
                f"G={key[2]}: one (backend, mode label, G) may have only one run"
            )
        seen[key] = run.directory
    return sorted(runs, key=lambda r: (*r.series, r.gpus))
