"""What the two training benchmarks (benchmarks/train.py, torch_train.py) share: model
settings, arguments, synthetic data set, timings, process reports, Ray actor and printing.

Imports only the standard library at module level: train.py must import distmis.model (its
Keras switch) before anything loads TensorFlow, and torch_train.py never loads TensorFlow.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from _common import loadavg, verdict, version


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity), else all the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# ---------------------------------------------------------------- the training benchmarks

# The model both train, the same in TF and torch so that their rows compare: U-Net, Adam.
SEED = 0
DEPTH = 3
BASE_FILTERS = 8
NORM = "batch"
LR, BETA_2, AMSGRAD = 1e-3, 0.999, False
# Ray's config knob (ray_constants.RAY_WORKER_NICENESS): the nice value workers start with.
RAY_WORKER_NICENESS = "RAY_worker_niceness"
TARGET_RAY_OVER_BARE = 0.9
TARGET_PIPELINE_OVER_RAY = 5.0
# What the C runtime or Ray read to size thread pools or pick devices, whatever the framework:
# a process report shows these before and after the framework's own.
ENV_KEYS_BEFORE = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
ENV_KEYS_AFTER = ("CUDA_VISIBLE_DEVICES", "LD_PRELOAD", "MALLOC_ARENA_MAX", RAY_WORKER_NICENESS)


# The stamp beside a benchmark's data: benchmarks/train.py and torch_train.py share a --workdir.
DATA_STAMP = "bench-train.json"


def training_dataset(
    root: Path, cases: int, source: tuple[int, int, int], shape: tuple[int, int, int], seed: int
):
    """Synthesise and convert ``cases`` (every one in the train split) under ``root``, or reuse
    an earlier run's data when it matches; returns its ``DatasetInfo``."""
    # Imported here: the callers decide what loads first (distmis.model's Keras switch).
    from distmis.data.convert import ConvertParams, convert_dataset
    from distmis.data.info import DatasetInfo
    from distmis.data.synthetic import synthesize_dataset

    out = root / "tfrecords"
    stamp = root / DATA_STAMP
    wanted = {"cases": cases, "source": list(source), "shape": list(shape), "seed": seed}
    if (
        stamp.is_file()
        and json.loads(stamp.read_text()) == wanted
        and (out / "info.json").is_file()
    ):
        print(f"  reusing {cases} cases {source} -> {shape} in {out}")
        return DatasetInfo.from_dir(out)
    started = time.perf_counter()
    task = synthesize_dataset(root / "msd", cases, source, seed, progress=False)
    if out.exists():
        shutil.rmtree(out)
    params = ConvertParams(shape=shape, label_mode="binary", split=(1.0, 0.0, 0.0))
    # Writing TFRecords needs TensorFlow: the conversion imports it in its own worker process.
    convert_dataset(task, out, params, workers=1, progress=False)
    stamp.write_text(json.dumps(wanted))
    print(
        f"  synthesised {cases} cases {source} and converted to {shape} in"
        f" {time.perf_counter() - started:.1f} s -> {out}"
    )
    return DatasetInfo.from_dir(out)


# The training benchmarks' data and loop sizes (benchmarks/train.py and torch_train.py alike).
DEFAULT_SHAPE = (32, 32, 24)
DEFAULT_SOURCE_SHAPE = (40, 40, 28)


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """--cases, --shape, --source-shape, --batch, --steps, --repeats, --cpus, --workdir,
    --worker-niceness."""
    parser.add_argument("--cases", type=int, default=12, help="cases to synthesise (default 12)")
    parser.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=DEFAULT_SHAPE,
        metavar=("X", "Y", "Z"),
        help="stored volume shape; each axis divisible by 8 (default 32 32 24)",
    )
    parser.add_argument(
        "--source-shape",
        type=int,
        nargs=3,
        metavar=("X", "Y", "Z"),
        help="synthesised shape, centre-cropped to --shape (default 40 40 28 for the default"
        " --shape, else --shape + 25%%)",
    )
    parser.add_argument("--batch", type=int, default=2, help="batch size (default 2)")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per run (default 40)")
    parser.add_argument("--repeats", type=int, default=5, help="best of R runs (default 5)")
    parser.add_argument(
        "--cpus", type=int, help="cores given to both timed loops and to Ray (default: all usable)"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="keep the synthetic data here and reuse it on later runs, also by the other"
        " training benchmark (default: a temp dir)",
    )
    parser.add_argument(
        "--worker-niceness",
        type=int,
        help=f"diagnostic: pass {RAY_WORKER_NICENESS}=N in the actor's env_vars instead of"
        " WORKER_ENV's value; default: WORKER_ENV as is",
    )


def check_training_arguments(
    parser: argparse.ArgumentParser, args: argparse.Namespace, depth: int
) -> argparse.Namespace:
    """Fill the defaults that depend on other arguments and refuse impossible values."""
    args.shape = tuple(args.shape)
    if args.source_shape is None:
        args.source_shape = (
            DEFAULT_SOURCE_SHAPE
            if args.shape == DEFAULT_SHAPE
            else tuple(max(16, s + s // 4) for s in args.shape)
        )
    args.source_shape = tuple(args.source_shape)
    if args.cpus is None:
        args.cpus = usable_cpus()
    if min(args.cases, args.batch, args.steps, args.repeats, args.cpus) < 1:
        parser.error("--cases, --batch, --steps, --repeats and --cpus must be >= 1")
    if any(s % 2**depth for s in args.shape):
        parser.error(f"every --shape axis must be divisible by {2**depth} (U-Net depth {depth})")
    return args


@contextlib.contextmanager
def training_workdir(workdir: Path | None) -> Iterator[Path]:
    """``workdir`` (made if missing, kept afterwards), or a temp dir removed afterwards."""
    own = workdir is None
    path = Path(tempfile.mkdtemp(prefix="distmis-bench-train-")) if own else workdir
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    finally:
        if own:
            shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class Timing:
    """One timed section."""

    seconds: float  # wall clock
    cpu: float  # process user + sys over the section, all threads
    volumes: int
    steps: int
    loss: float = math.nan  # mean training loss over the section's steps; nan if not measured

    @property
    def rate(self) -> float:
        return self.volumes / self.seconds

    @property
    def cpu_per_wall(self) -> float:
        return self.cpu / self.seconds

    @property
    def cpu_per_volume(self) -> float:
        return self.cpu / self.volumes


def cpu_seconds() -> float:
    """This process's CPU time so far: user + sys, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_report(
    env_keys: Iterable[str],
    framework: str,
    intra_op: int,
    inter_op: int,
    notes: dict[str, object] | None = None,
) -> dict:
    """Where and how this process runs: the facts that decide how many cores ``framework``
    uses. The caller reads its thread pools' sizes (``intra_op``, ``inter_op``) in this
    process; ``env_keys`` are the framework's own variables to show (between
    ``ENV_KEYS_BEFORE`` and ``ENV_KEYS_AFTER``), ``notes`` labelled facts to print last."""
    keys = (*ENV_KEYS_BEFORE, *env_keys, *ENV_KEYS_AFTER)
    return {
        "pid": os.getpid(),
        "affinity_cpus": usable_cpus(),
        "nice": os.nice(0),
        "session": os.getsid(0),
        "autogroup": _autogroup(),
        "framework": framework,
        "intra_op": intra_op,
        "inter_op": inter_op,
        "threads_now": _thread_count(),
        "notes": dict(notes or {}),
        "env": {k: os.environ.get(k, "(unset)") for k in keys},
    }


def _autogroup() -> str:
    """The CFS autogroup (one per session when the kernel enables them): nice values only
    weigh against processes of the same group; groups share the CPUs among themselves."""
    try:
        with open("/proc/sys/kernel/sched_autogroup_enabled") as fh:
            if fh.read().strip() != "1":
                return "off"
        with open("/proc/self/autogroup") as fh:
            return fh.read().strip()
    except OSError:
        return "unknown"


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return -1


@contextlib.contextmanager
def ray_actor(
    actor_class: type, cpus: int, worker_niceness: int | None, *init_args
) -> Iterator[tuple[object, dict]]:
    """Ray started with ``cpus`` CPUs and one ``actor_class(*init_args)`` holding them all,
    env_vars from ``WORKER_ENV`` (``RAY_worker_niceness`` = ``worker_niceness`` when given).
    Prints how Ray started; yields the actor and its ``report()``; kills it and stops Ray."""
    import ray

    from distmis.train.runtime import WORKER_ENV, start_ray, stop_ray

    started = time.perf_counter()
    resources = start_ray(None, num_cpus=cpus, num_gpus=0)
    actor = None
    try:
        env_vars = dict(WORKER_ENV)
        if worker_niceness is not None:
            env_vars[RAY_WORKER_NICENESS] = str(worker_niceness)
        actor_cls = ray.remote(num_cpus=cpus, runtime_env={"env_vars": env_vars})(actor_class)
        actor = actor_cls.remote(*init_args)
        report = ray.get(actor.report.remote())
        print(
            f"\nray: started in {time.perf_counter() - started:.1f} s (not timed), resources"
            f" {resources}; one actor with num_cpus={cpus}, runtime_env env_vars {env_vars}"
        )
        yield actor, report
    finally:
        if actor is not None:
            ray.kill(actor)
        stop_ray()


def print_machine(
    cpus: int,
    dists: Sequence[str],
    hardware: Sequence[tuple[str, str]] = (),
    runtime: Sequence[tuple[str, str]] = (),
) -> None:
    """The machine, a labelled line each: cores (all, usable, given), platform, ``hardware``,
    Python, the versions of ``dists``, ``runtime``, load average."""
    lines = [
        ("cpus", f"{os.cpu_count()} (usable by this process: {usable_cpus()}; given: {cpus})"),
        ("platform", f"{platform.platform()} ({platform.processor() or platform.machine()})"),
        *hardware,
        ("python", f"{sys.version.split()[0]} ({platform.python_implementation()})"),
        *((dist, version(dist)) for dist in dists),
        *runtime,
    ]
    print("machine")
    for label, value in lines:
        print(f"  {label:<11} {value}")
    print(f"  {'load avg':<11} {loadavg()} (1, 5, 15 min)")


def print_process(title: str, report: dict) -> None:
    """One ``process_report`` in two lines."""
    env = " ".join(f"{k}={v}" for k, v in report["env"].items() if v != "(unset)")
    notes = "".join(f", {label}: {value}" for label, value in report["notes"].items())
    print(
        f"  {title:<13} pid {report['pid']}: affinity {report['affinity_cpus']} cpus,"
        f" nice {report['nice']}, session {report['session']} ({report['autogroup']}),"
        f" {report['framework']} intra_op {report['intra_op']} inter_op {report['inter_op']},"
        f" {report['threads_now']} threads{notes}"
    )
    print(f"  {'':<13} env: {env or '(none of interest set)'}")


def alternate_runs(
    repeats: int, runners: dict[str, Callable[[int], Timing]]
) -> tuple[dict[str, Timing], dict[str, list[Timing]]]:
    """``repeats`` rounds of ``runners[name](repeat)``, in the runners' order and reversed
    every other round (a b, b a, ...), each run printed (with its loss where it has one);
    returns the fastest run of each name and all of them."""
    best: dict[str, Timing] = {}
    runs: dict[str, list[Timing]] = {name: [] for name in runners}
    for repeat in range(repeats):
        order = list(runners) if repeat % 2 == 0 else list(reversed(runners))
        for name in order:
            run = runners[name](repeat)
            runs[name].append(run)
            if name not in best or run.seconds < best[name].seconds:
                best[name] = run
            loss = "" if math.isnan(run.loss) else f"  loss {run.loss:.4f}"
            print(
                f"  repeat {repeat + 1}: {name:<4} {run.seconds:6.2f} s"
                f" {run.rate:6.2f} vol/s  cpu/wall {run.cpu_per_wall:4.2f}"
                f"  cpu {1000 * run.cpu_per_volume:5.1f} ms/vol{loss}"
                f"  (load average {loadavg()})"
            )
    return best, runs


def print_table(rows: Sequence[tuple[str, Timing]], cpus: int, framework: str) -> None:
    """The results table, a titled row per timing, and what its CPU columns mean."""
    print(
        f"  {'what':<43}{'volumes/s':>10}{'seconds':>9}{'steps':>7}{'cpu/wall':>10}"
        f"{'cpu ms/vol':>12}"
    )
    for title, run in rows:
        print(
            f"  {title:<43}{run.rate:>10.2f}{run.seconds:>9.3f}{run.steps:>7}"
            f"{run.cpu_per_wall:>10.2f}{1000 * run.cpu_per_volume:>12.2f}"
        )
    print(
        "  cpu/wall: the process's CPU seconds (user + sys, all threads) per wall second;"
        f" near {cpus} when {framework} has the cpus to itself, lower when other processes"
        " take them. cpu ms/vol: CPU time per volume, the work done whoever got the cores."
    )


def print_ratios(best: dict[str, Timing], runs: dict[str, list[Timing]], unit: str) -> None:
    """The two targets from the best runs, (b) ray / (a) bare and (c) pipeline / (b) ray, each
    "ray {unit}", and for reference (b) / (a) of the median runs and per CPU second."""
    ray_over_bare = best["ray"].rate / best["bare"].rate
    pipeline_over_ray = best["pipeline"].rate / best["ray"].rate
    print("\nratios")
    print(
        f"  (b) / (a) {f'ray {unit} / bare {unit}:':<25}{ray_over_bare:6.2f}"
        f"  (target >= {TARGET_RAY_OVER_BARE})  {verdict(ray_over_bare >= TARGET_RAY_OVER_BARE)}"
    )
    print(
        f"  (c) / (b) {f'pipeline / ray {unit}:':<25}{pipeline_over_ray:6.2f}"
        f"  (target >= {TARGET_PIPELINE_OVER_RAY:g})"
        f"  {verdict(pipeline_over_ray >= TARGET_PIPELINE_OVER_RAY)}"
    )
    median_ratio = statistics.median(r.rate for r in runs["ray"]) / statistics.median(
        r.rate for r in runs["bare"]
    )
    cpu_ratio = best["bare"].cpu_per_volume / best["ray"].cpu_per_volume
    print(
        f"  (for reference, not targets: (b) / (a) of the median runs {median_ratio:.2f};"
        f" (b) / (a) in volumes per CPU second, best runs, {cpu_ratio:.2f}, which other"
        " load on the machine disturbs far less than wall time)"
    )
