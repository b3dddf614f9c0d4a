"""A hybrid trial's Ray Train run → its Ray Tune trial: every report made by the trial's own
thread, in order, before the trial function returns.

Why not Ray's ``TuneReportCallback``: it hands each report to the Tune trial's *main* thread
through a one-item queue actor that thread polls, while the trial function's thread reports
``RESULT_DUPLICATE`` into Tune's one-slot result queue as soon as ``fit()`` returns. When the
run's last report is still in the queue actor at that moment, the main thread takes it, frees
the function thread's lock, and blocks for ever putting it behind ``RESULT_DUPLICATE`` (Ray
2.60, ``ray/train/_internal/session.py`` ``_get_result_from_queues``). The trial stays
RUNNING with its Train run finished: CI's two-node SLURM test hung 25 minutes on it
(2026-12-07), and a Tune run of four one-report trials reproduces it (two of four hung).
Here nothing reaches Tune but ``ray.tune.report`` from the trial function's thread, so
there is no second reporter to race.

**A stopped trial ends its Train run** (ASHA, which also stops every trial at ``max_t``, its
last epoch). Tune stops a function trial with the trial actor's ``stop()`` →
``FunctionTrainable.cleanup()`` → ``session.finish(timeout=0)`` (Ray 2.60,
``ray/tune/trainable/trainable.py`` 721-730, ``function_trainable.py`` 151-161), which only
wakes the trial's thread (``SystemExit`` in ``tune.report``, ``ray/train/_internal/session.py``
414-422) and returns; Tune then drops the actor and its process ends without waiting for any
thread. The Train controller, an actor that process owns, dies with it ungracefully: the
placement group it created for its workers stays, and Train's detached placement-group cleaner
cannot see the controller die without Ray's State API (``placement_group_cleaner.py`` 61-90),
which needs the dashboard (off, :mod:`distmis.train.runtime`). The workers then hold their
CPUs/GPUs and the next trial waits for ever. Ending the run from the trial's thread on its
``SystemExit`` is too late (the process is gone first; tried, 2026-12), so it is done inside
``cleanup()``, which Tune waits for (up to ``TUNE_FORCE_TRIAL_CLEANUP_S``, 600 s,
``tune_controller.py`` 149): :func:`stoppable` subclasses the function trainable and, before
Ray's cleanup, ends the live run (:meth:`TrainRun.end`). A run stopped on its last report has
written its model and ``result.json`` already (:func:`distmis.trial.run_trial` ``finish()``) and
is left to return from ``fit()``; any other is aborted with the controller's ``abort()``
(``ray/train/v2/_internal/execution/controller/controller.py`` 965-982: stops the cleaner,
shuts the workers down, removes the placement group, then exits the controller). The
controller's handle comes from a :class:`ControllerHandover` callback when the controller
starts, so a stop before the first report can abort too. Measured on CPU workers (spike,
2026-12): every placement group REMOVED, no Train worker or controller left, the next trial
starts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray
from ray.train import UserCallback
from ray.train.v2._internal.execution.callback import ControllerCallback
from ray.util.queue import Empty, Queue

log = logging.getLogger(__name__)

CHECKPOINT_PATH_KEY = "checkpoint_path"  # the key TuneReportCallback used, kept for parity
POLL_SECONDS = 0.2  # how often the trial's thread looks whether fit() has returned
# How long a stopped trial waits for its Train run to end (an abort takes seconds; a run
# stopped on its last report still persists that report's checkpoint).
END_TIMEOUT_S = 120.0
# What the queue carries: a report's metrics, or the Train controller's actor handle.
REPORT, CONTROLLER = "report", "controller"


class ReportForwarder(UserCallback):
    """Runs in the Train controller: puts rank 0's metrics of each report on the trial's queue.

    The queue holds one report, so the controller waits until the trial's thread has taken the
    previous one: Tune sees each epoch while the run trains, as with ``TuneReportCallback``.
    """

    def __init__(self, queue: Queue):
        self._queue = queue

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        forwarded = dict(metrics[0])
        if checkpoint is not None:
            forwarded[CHECKPOINT_PATH_KEY] = checkpoint.path
        self._queue.put((REPORT, forwarded))


class ControllerHandover(ControllerCallback):
    """Runs in the Train controller: puts the controller's own actor handle on the trial's
    queue when it starts, so that a stopped trial can abort the run (:meth:`TrainRun.end`).

    A Ray DeveloperAPI hook: Train keeps callbacks other than ``UserCallback`` as they are
    (``ray/train/v2/api/data_parallel_trainer.py`` 255-258) and calls this one when
    ``TrainController.run`` starts (``controller.py`` 492-497), once per run, retries included.
    """

    def __init__(self, queue: Queue):
        self._queue = queue

    def after_controller_start(self, train_run_context) -> None:
        self._queue.put((CONTROLLER, ray.get_runtime_context().current_actor))


@dataclass
class TrainRun:
    """A trial's live Train run, as far as a stop needs it: the thread in ``fit()``, the
    controller's handle once it started, the last report Tune got and whether that report is
    the run's last (then the run ends by itself)."""

    fitting: threading.Thread
    is_final: Callable[[dict], bool]
    controller: Any = None
    last_report: dict | None = None

    def end(self, timeout_s: float = END_TIMEOUT_S) -> str:
        """End the run for a stopping trial and say how; a run stopped on its last report is
        left to return from ``fit()``, any other is aborted. Waits at most ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        if self.last_report is not None and self.is_final(self.last_report):
            self.fitting.join(timeout_s)
            if not self.fitting.is_alive():
                return "finished its last report"
        # Stopped before the controller handed over its handle: it is seconds away.
        while self.controller is None and self.fitting.is_alive():
            if time.monotonic() >= deadline:
                return "left running: its controller never started"
            time.sleep(POLL_SECONDS)
        if self.controller is not None and self.fitting.is_alive():
            try:
                ray.get(self.controller.abort.remote(), timeout=_left(deadline))
            except ray.exceptions.RayActorError:
                pass  # abort() ends by exiting the controller: the expected answer
            except ray.exceptions.GetTimeoutError:
                return "left running: its controller did not abort in time"
        self.fitting.join(_left(deadline))  # fit() raises once the controller is gone
        return "aborted" if not self.fitting.is_alive() else "left running: fit() did not return"


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


# This process's live Train run. One per process: each hybrid trial gets an actor of its own
# (Tune's reuse_actors is off, and HybridTrial.reset_config refuses reuse).
_live_run: TrainRun | None = None


def end_live_run(timeout_s: float = END_TIMEOUT_S) -> None:
    """End this process's live Train run, if any (a stopping trial's cleanup)."""
    run = _live_run
    if run is None or not run.fitting.is_alive():
        return
    started = time.monotonic()
    how = run.end(timeout_s)
    message = "stopped trial's Train run %s (%.1f s, last report %s)"
    args = (how, time.monotonic() - started, run.last_report)
    if how.startswith("left running"):
        log.warning(message + ": its workers may keep their resources", *args)
    else:
        log.info(message, *args)


def stoppable(train_fn: Callable[[dict], None]) -> type:
    """The Tune trainable of the hybrid trial function ``train_fn``: Ray's function trainable
    whose cleanup (Tune's stop) first ends the trial's Train run (:func:`end_live_run`)."""
    from ray.tune.trainable.function_trainable import wrap_function

    class HybridTrial(wrap_function(train_fn)):
        def cleanup(self) -> None:
            try:
                end_live_run()
            finally:
                super().cleanup()

        def reset_config(self, new_config: dict) -> bool:
            return False  # a reused actor would skip cleanup(): the old run would leak

    HybridTrial.__name__ = train_fn.__name__  # Tune names trials and logs after it
    return HybridTrial


def fit_and_report(
    make_trainer: Callable[[list[UserCallback]], Any],
    report: Callable[[dict], None] | None = None,
    poll_seconds: float = POLL_SECONDS,
    is_final: Callable[[dict], bool] = lambda metrics: False,
):
    """Fit the trainer ``make_trainer(callbacks)`` builds, calling ``report`` (default
    ``ray.tune.report``) on this thread with each of its reports, the last one included,
    before returning ``fit()``'s result or raising its error. ``is_final(metrics)``: whether
    a report is the run's last, which a stopped trial lets finish (:meth:`TrainRun.end`)."""
    global _live_run
    if report is None:
        from ray import tune

        report = tune.report
    queue = Queue(maxsize=1, actor_options={"num_cpus": 0})
    trainer = make_trainer([ReportForwarder(queue), ControllerHandover(queue)])
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as error:  # raised again on the trial's thread below
            outcome["error"] = error

    fitting = threading.Thread(target=fit, name="distmis-train-fit", daemon=True)
    run = _live_run = TrainRun(fitting, is_final)
    fitting.start()
    try:
        # The controller puts a report before fit() can return, so once the thread is done
        # the queue holds the last report or nothing.
        while fitting.is_alive() or not queue.empty():
            try:
                kind, payload = queue.get(timeout=poll_seconds)
            except Empty:
                continue
            if kind == CONTROLLER:
                run.controller = payload
                continue
            run.last_report = payload
            report(payload)  # raises SystemExit when Tune stops the trial (TrainRun.end)
    finally:
        queue.shutdown()
    fitting.join()
    _live_run = None
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
