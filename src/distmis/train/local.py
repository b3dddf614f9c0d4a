"""The local runner: the configurations one after another, in this process, without Ray.

``distmis train --runner local`` trains on one device (the first visible GPU, or this
process's CPU share) with the backend's own trial steps (:meth:`Backend.trial_steps`) under
the shared skeleton (:func:`distmis.trial.run_attempt`), so a trial leaves exactly the
files a Ray trial leaves and the run the same ``trials.csv``, ``summary.json`` and best
model. It exists for machines that have a framework but no Ray (a GPU box to measure the
loop on), and for debugging a trial without Ray's processes in between.

What Ray would do for a trial, it does itself, in the same order:

- checkpoints: each epoch's report copies rank 0's checkpoint folder to
  ``<out>/local/<trial_id>/checkpoint-<epoch>/`` (complete once its ``.complete`` marker is
  written; older ones are then removed), and a retried or resumed attempt restores the
  newest complete one. A finished trial's folder is removed with it: its model is saved;
- retries: a failing attempt is retried ``max_failures`` times from its last checkpoint,
  then recorded as failed and the next configuration starts;
- resume: configurations with a record from an interrupted run are not trained again (the
  skeleton every runner shares, :mod:`distmis.train.grid`).

The configurations are a list (the grid, random search's samples) or, for TPE, the search
itself: asked one configuration at a time, each told its result before the next is asked
(:func:`distmis.train.grid.run_search`), so a seeded TPE run proposes the same sequence again.

Nothing here imports Ray, TensorFlow or PyTorch; the backend imports its framework.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from distmis import backends
from distmis.search import Proposal, Search
from distmis.train.grid import Outcome, run_grid, run_search
from distmis.train.settings import TrainSettings
from distmis.train.trials import TrialRecord
from distmis.trial import RUNNER_LOCAL, Runner, StepsBuilder, run_attempt

log = logging.getLogger(__name__)

LOCAL_DIR = "local"  # <out>/local/<trial_id>/: the running trial's checkpoints
COMPLETE_MARKER = ".complete"


class LocalCheckpoint:
    """A checkpoint folder, as the skeleton uses Ray's ``Checkpoint``: ``from_directory``
    (the report copies it before the temporary folder goes) and ``as_directory``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @classmethod
    def from_directory(cls, path: str | Path) -> LocalCheckpoint:
        return cls(Path(path))

    @contextlib.contextmanager
    def as_directory(self) -> Iterator[str]:
        yield str(self.path)


class CheckpointStore:
    """One trial's reported checkpoints under ``directory``; only the newest is kept."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.reports: list[Mapping[str, Any]] = []

    def _complete(self) -> list[Path]:
        found = [
            p
            for p in self.directory.glob("checkpoint-*")
            if (p / COMPLETE_MARKER).is_file() and p.name.split("-")[-1].isdigit()
        ]
        return sorted(found, key=lambda p: int(p.name.split("-")[-1]))

    def report(self, metrics: Mapping[str, Any], checkpoint: LocalCheckpoint | None = None):
        """What ``ray.train.report`` does for the trial: keep the metrics and the checkpoint."""
        self.reports.append(dict(metrics))
        if checkpoint is None:
            return
        target = self.directory / f"checkpoint-{int(metrics['epoch']):06d}"
        shutil.rmtree(target, ignore_errors=True)  # an incomplete copy of a killed attempt
        shutil.copytree(checkpoint.path, target)
        # The marker last: a copy cut short by a kill is never restored.
        (target / COMPLETE_MARKER).touch()
        for older in self._complete()[:-1]:
            shutil.rmtree(older, ignore_errors=True)

    def latest(self) -> LocalCheckpoint | None:
        """The newest complete checkpoint (what a retried or resumed attempt restores)."""
        complete = self._complete()
        return LocalCheckpoint(complete[-1]) if complete else None

    def runner(self) -> Runner:
        return Runner(
            rank=0,
            world_size=1,
            report=self.report,
            get_checkpoint=self.latest,
            checkpoint_type=LocalCheckpoint,
            kind=RUNNER_LOCAL,
        )

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def run_local(
    settings: TrainSettings,
    configurations: Sequence[Proposal] | Search,
    on_record: Callable[[TrialRecord], None],
    *,
    build_steps: StepsBuilder | None = None,
) -> list[TrialRecord]:
    """Train every configuration in this process, in proposal order: a list through
    :func:`distmis.train.grid.run_grid`, a search (TPE) through
    :func:`distmis.train.grid.run_search`; each record as its trial ends.

    ``build_steps`` defaults to the backend's (:meth:`Backend.trial_steps`); tests pass their
    own to inject a failure mid-trial. ``KeyboardInterrupt`` and ``SystemExit`` (SIGTERM) end
    the run at once and leave the checkpoints for the rerun to resume from.
    """
    build_steps = build_steps or backends.get(settings.backend).trial_steps()
    if isinstance(configurations, Search):
        train_one = functools.partial(_train_one, settings, build_steps=build_steps)
        records = run_search(settings, configurations, on_record, train_one)
    else:
        trainer = functools.partial(train_in_this_process, settings, build_steps)
        records = run_grid(settings, configurations, on_record, trainer)
    with contextlib.suppress(OSError):
        (settings.out_dir / LOCAL_DIR).rmdir()  # gone once no trial is left unfinished
    return records


def train_in_this_process(
    settings: TrainSettings, build_steps: StepsBuilder, pending: Sequence[Proposal]
) -> Iterator[Outcome]:
    """The local runner's trainer of pending configurations: one after another, each
    outcome as its trial ends."""
    for position, proposal in enumerate(pending, start=1):
        log.info("[%d/%d] training %s locally", position, len(pending), proposal.trial_id)
        yield _train_one(settings, proposal, build_steps=build_steps)


def _train_one(
    settings: TrainSettings, proposal: Proposal, *, build_steps: StepsBuilder
) -> Outcome:
    """Up to ``1 + max_failures`` attempts, each from the last checkpoint; how they ended."""
    trial = settings.trial_config(proposal)
    store = CheckpointStore(settings.out_dir / LOCAL_DIR / proposal.trial_id)
    driver_start = time.time()
    error = None
    for attempt in range(settings.max_failures + 1):
        try:
            run_attempt(trial, store.runner(), build_steps, time.time())
            error = None
            break
        except Exception as exc:  # noqa: BLE001 - recorded (failed.json) and retried
            error = f"{type(exc).__name__}: {exc}"
            retry = attempt < settings.max_failures
            log.error(
                "%s attempt %d failed: %s%s",
                proposal.trial_id,
                attempt + 1,
                error.splitlines()[0],
                "; retrying from its last checkpoint" if retry else "",
            )
    driver_end = time.time()
    # The record reads only <out>/trials/<trial_id>/; the checkpoints go with the trial.
    store.remove()
    return Outcome(proposal, error, driver_start, driver_end)
