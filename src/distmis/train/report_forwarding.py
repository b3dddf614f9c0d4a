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
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ray.train import UserCallback
from ray.util.queue import Empty, Queue

CHECKPOINT_PATH_KEY = "checkpoint_path"  # the key TuneReportCallback used, kept for parity
POLL_SECONDS = 0.2  # how often the trial's thread looks whether fit() has returned


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
        self._queue.put(forwarded)


def fit_and_report(
    make_trainer: Callable[[list[UserCallback]], Any],
    report: Callable[[dict], None] | None = None,
    poll_seconds: float = POLL_SECONDS,
):
    """Fit the trainer ``make_trainer(callbacks)`` builds, calling ``report`` (default
    ``ray.tune.report``) on this thread with each of its reports, the last one included,
    before returning ``fit()``'s result or raising its error."""
    if report is None:
        from ray import tune

        report = tune.report
    queue = Queue(maxsize=1, actor_options={"num_cpus": 0})
    trainer = make_trainer([ReportForwarder(queue)])
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as error:  # raised again on the trial's thread below
            outcome["error"] = error

    fitting = threading.Thread(target=fit, name="distmis-train-fit", daemon=True)
    fitting.start()
    try:
        # The controller puts a report before fit() can return, so once the thread is done
        # the queue holds the last report or nothing.
        while fitting.is_alive() or not queue.empty():
            try:
                metrics = queue.get(timeout=poll_seconds)
            except Empty:
                continue
            report(metrics)
    finally:
        queue.shutdown()
    fitting.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
