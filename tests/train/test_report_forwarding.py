"""A hybrid trial's reports reach Tune, the last one included, and the trial ends: real Ray Tune
trials in a subprocess (a hang fails the test on its timeout instead of stalling the suite).

The trainer is a stand-in whose ``fit()`` makes its reports and returns at once: the timing
under which Ray's own ``TuneReportCallback`` hand-over left trials RUNNING for ever (two of
four such trials hung, 2026-12-07; see ``distmis.train.report_forwarding``)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import json, ray
    from ray import tune
    from ray.train import UserCallback
    from distmis.train.report_forwarding import fit_and_report

    class QuickTrainer:
        # Reports like a Train controller (each UserCallback's after_report), then returns.
        def __init__(self, callbacks, epochs, fail_after=None):
            self.callbacks = [c for c in callbacks if isinstance(c, UserCallback)]
            self.epochs, self.fail_after = epochs, fail_after
        def fit(self):
            for epoch in range(1, self.epochs + 1):
                if epoch == self.fail_after:
                    raise ValueError(f"worker failed in epoch {epoch}")
                for callback in self.callbacks:
                    callback.after_report(None, [{"epoch": epoch, "val_dice": epoch / 10}], None)
            return f"fitted {self.epochs}"

    def trainable(config):
        fit_and_report(lambda callbacks: QuickTrainer(callbacks, config["epochs"]))

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    grid = tune.Tuner(
        trainable,
        param_space={"epochs": tune.grid_search([1, 1, 1, 1, 3, 3])},
        tune_config=tune.TuneConfig(max_concurrent_trials=4),
        run_config=tune.RunConfig(storage_path=STORAGE, verbose=0),
    ).fit()
    trials = sorted(
        [r.config["epochs"], r.metrics["training_iteration"], r.metrics["epoch"], r.error is None]
        for r in grid
    )

    seen = []
    try:
        fit_and_report(lambda cb: QuickTrainer(cb, 3, fail_after=3), report=seen.append)
        failure = None
    except ValueError as error:
        failure = str(error)
    result = fit_and_report(lambda cb: QuickTrainer(cb, 2), report=seen.append)
    print(json.dumps({"trials": trials, "seen": seen, "failure": failure, "result": result}))
    """
)


def test_every_report_reaches_tune_and_each_trial_ends(tmp_path):
    script = SCRIPT.replace("STORAGE", repr(str(tmp_path / "tune")))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    # Every trial ended, with as many Tune iterations as reports and the last report last.
    assert out["trials"] == [[1, 1, 1, True]] * 4 + [[3, 3, 3, True]] * 2
    # A failing fit: the reports before the failure were made, then its error is raised on
    # the caller's thread; a later fit reports in order and returns fit()'s result.
    assert out["failure"] == "worker failed in epoch 3"
    assert [m["epoch"] for m in out["seen"]] == [1, 2, 1, 2]
    assert out["result"] == "fitted 2"
