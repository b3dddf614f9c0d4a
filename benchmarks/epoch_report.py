"""How much Ray Train's controller poll interval stretches short data-parallel epochs.

Ray Train's controller collects a worker's ``ray.train.report`` only when it polls the worker
group, every ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` (2 s unless set), and a worker's next report
waits until the previous one was collected. Training sets the interval to
``distmis.train.runtime.TRAIN_POLL_SECONDS`` unless the environment sets it. This script runs
the real ``distmis train`` CLI (a subprocess, data mode unless ``--mode``) on small synthetic
data whose epochs are shorter than 2 s, alternately with Ray's default interval and with the
one training uses (the variable unset, so the code that runs decides), and reads from the
files the runs write (``epochs.jsonl``, ``summary.json``):

- epoch compute: median of ``train_seconds + val_seconds`` over every epoch after a trial's
  first;
- epoch gap: median of (next epoch's ``started`` − this epoch's ``time``): checkpoint, report
  and whatever waits for the controller;
- the run's makespan (``summary.json``).

Prints a table per setting (median over ``--repeats``) and the makespan ratio. A benchmark,
not a test: it exits 0 unless a run fails.

    python benchmarks/epoch_report.py [--backend torch] [--mode data] [--gpus 2]
                                      [--epochs 6] [--cases 16] [--repeats 2] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model, loadavg, version  # noqa: E402

from distmis import run_folder  # noqa: E402
from distmis.hparams import HParams  # noqa: E402

RAY_DEFAULT_POLL = "2.0"  # Ray Train's DEFAULT_HEALTH_CHECK_INTERVAL_S
# Two configurations: lr 0.001 and 0.005, the other hyperparameters the grid's defaults.
GRID = {**HParams().as_space(), "lr": [0.001, 0.005]}


def prepare_data(workdir: Path, cases: int) -> Path:
    """``cases`` synthetic 24×24×20 cases converted to 16³ TFRecords (reused if present)."""
    from distmis.prepare.convert import ConvertParams, convert_dataset
    from distmis.prepare.synthetic import synthesize_dataset

    out = workdir / "tfr"
    if (out / "info.json").is_file():
        return out
    task = synthesize_dataset(workdir / "raw", cases, (24, 24, 20), seed=0, progress=False)
    convert_dataset(task, out, ConvertParams(shape=(16, 16, 16), shards=(2, 1, 1)), progress=False)
    return out


def run_once(args: argparse.Namespace, data: Path, out: Path, poll: str | None) -> dict:
    """One ``distmis train`` run; ``poll`` None leaves the interval to training."""
    import yaml

    out.parent.mkdir(parents=True, exist_ok=True)
    config = out.parent / f"{out.name}.yaml"
    train = {"backend": args.backend, "epochs": args.epochs, "search_space": GRID}
    config.write_text(yaml.safe_dump({"train": train}))
    env = {k: v for k, v in os.environ.items() if k != "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"}
    if poll is not None:
        env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = poll
    command = [
        *(sys.executable, "-m", "distmis.cli", "train", "--mode", args.mode),
        *("--gpus", str(args.gpus), "--data", str(data), "--out", str(out)),
        *("--config", str(config)),
    ]
    if args.mode == "hybrid":
        command += ["--gpus-per-trial", str(args.gpus)]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"distmis train failed ({done.returncode}):\n{done.stderr[-3000:]}")
    # The run's files, read through their contract (distmis.run_folder).
    trials = run_folder.read_trials(out / run_folder.TRIALS_FILE)
    failed = [trial for trial in trials if trial.status != "ok"]
    if failed:
        sys.exit(f"{len(failed)} trial(s) of {out} did not finish: {failed[0].error}")
    computes, gaps = [], []
    for trial in trials:
        epochs = run_folder.read_epochs(run_folder.trial_folder(out, trial.trial_id))
        computes += [e.train_seconds + e.val_seconds for e in epochs[1:]]
        gaps += [b.started - a.time for a, b in zip(epochs, epochs[1:], strict=False)]
    summary = run_folder.RunSummary.read(out / run_folder.SUMMARY_FILE)
    return {
        "compute": statistics.median(computes),
        "gap": statistics.median(gaps),
        "gap_max": max(gaps),
        "makespan": summary.makespan_seconds,
        "wall": wall,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("tensorflow", "torch"), default="torch")
    parser.add_argument("--mode", choices=("data", "hybrid"), default="data")
    parser.add_argument("--gpus", type=int, default=2, help="CPU workers standing in for GPUs")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--cases", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)

    from distmis.train.runtime import TRAIN_POLL_SECONDS

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="epoch-report-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, load {loadavg()}")
    print(f"ray {version('ray')}, torch {version('torch')}, tensorflow {version('tensorflow')}")
    print(
        f"{args.backend} {args.mode} mode, {args.gpus} workers, {len(GRID['lr'])} configurations"
        f" x {args.epochs} epochs, {args.cases} cases of 16^3; workdir {workdir}"
    )
    data = prepare_data(workdir, args.cases)
    settings = {f"Ray's default ({RAY_DEFAULT_POLL} s)": RAY_DEFAULT_POLL}
    settings[f"training's ({TRAIN_POLL_SECONDS} s)"] = None
    results: dict[str, list[dict]] = {name: [] for name in settings}
    for repeat in range(args.repeats):
        # Alternate the order so a drift in the machine's load hits both alike.
        order = list(settings) if repeat % 2 == 0 else list(reversed(settings))
        for name in order:
            which = "ray-default" if settings[name] else "training"
            out = workdir / "runs" / f"{args.backend}-{args.mode}-{args.gpus}-r{repeat}-{which}"
            shutil.rmtree(out, ignore_errors=True)  # a run resumes what it finds
            result = run_once(args, data, out, settings[name])
            results[name].append(result)
            print(
                f"  repeat {repeat + 1}, {name}: makespan {result['makespan']:.1f} s, "
                f"epoch {result['compute']:.2f} s + gap {result['gap']:.2f} s",
                flush=True,
            )

    print()
    print(
        "| poll interval | epoch compute (s) | gap between epochs (s, median / max) "
        "| makespan (s) |"
    )
    print("|---|---|---|---|")
    medians = {}
    for name, runs in results.items():
        medians[name] = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        m = medians[name]
        print(
            f"| {name} | {m['compute']:.2f} | {m['gap']:.2f} / {m['gap_max']:.2f} "
            f"| {m['makespan']:.1f} |"
        )
    default, ours = (medians[name] for name in settings)
    print(f"\nmakespan, Ray's default / training's: {default['makespan'] / ours['makespan']:.2f}")
    print(f"gap, Ray's default - training's: {default['gap'] - ours['gap']:.2f} s per epoch")


if __name__ == "__main__":
    main()
