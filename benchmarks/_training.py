"""What ``benchmarks/train.py`` does whatever the backend: settings, arguments, synthetic data,
the two sides that train (:class:`Trainer`), timings, process reports, the Ray actor, printing.

A backend adds only a :class:`BenchBackend`: how to build the training loop's step and how to
feed it batches (``_train_tensorflow.py``, ``_train_torch.py``; :func:`load_backend` imports
the one asked for and nothing of the other). Imports only the standard library,
:mod:`distmis.hparams` and :mod:`distmis.shards.info` at module level: the TensorFlow side must import
``distmis.backends.tensorflow`` (its Keras switch) before anything loads TensorFlow, and the
torch side never loads TensorFlow.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import importlib
import itertools
import json
import math
import os
import resource
import shutil
import statistics
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from _common import loadavg, quiet_stderr, usable_cpus, verdict

from distmis.hparams import HParams
from distmis.shards.info import DatasetInfo

# ---------------------------------------------------------------- settings

# The model both backends train, the same in TF and torch so that their rows compare: the
# hyperparameters' defaults (distmis.hparams: Keras' Adam, batch norm).
SEED = 0
DEPTH = 3
BASE_FILTERS = 8
HPARAMS = HParams()
PRECISIONS = ("fp32", "bf16")  # fp16 needs a GPU (TorchBackend.check_options)
# Ray's config knob (ray_constants.RAY_WORKER_NICENESS): the nice value workers start with.
RAY_WORKER_NICENESS = "RAY_worker_niceness"
TARGET_RAY_OVER_BARE = 0.9
TARGET_PIPELINE_OVER_RAY = 5.0
# What the C runtime or Ray read to size thread pools or pick devices, whatever the framework:
# a process report shows these before and after the framework's own.
ENV_KEYS_BEFORE = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
ENV_KEYS_AFTER = ("CUDA_VISIBLE_DEVICES", "LD_PRELOAD", "MALLOC_ARENA_MAX", RAY_WORKER_NICENESS)
# Where a Trainer's batches come from: the split in memory (a) or the real pipeline (b).
IN_MEMORY, PIPELINE = "in memory", "pipeline"


@dataclass(frozen=True)
class StepSettings:
    """What the step is built with: the model's size, one configuration of the grid, the seed
    and the backend's own switches (torch: ``precision``, ``channels_last_3d``), as a trial
    gets them (:meth:`distmis.trial.TrialConfig.architecture` and ``adam``)."""

    depth: int = DEPTH
    base_filters: int = BASE_FILTERS
    hparams: HParams = HPARAMS
    seed: int = SEED
    backend_options: Mapping[str, Any] = field(default_factory=dict)

    def architecture(self) -> dict[str, Any]:
        """The U-Net's size and its hyperparameters (``norm``)."""
        return {
            "depth": self.depth,
            "base_filters": self.base_filters,
            **self.hparams.model_kwargs(),
        }

    def optimizer(self) -> dict[str, Any]:
        """Adam's hyperparameters (``lr``, ``beta_2``, ``amsgrad``)."""
        return self.hparams.optimizer_kwargs()


# ---------------------------------------------------------------- what a backend supplies


class BenchBackend(ABC):
    """One framework's part of the benchmark: the training loop's own step, built in
    ``__init__`` (threads limited first, as the trial's steps do), and its feeds.

    A *feed* is whatever :meth:`train` and :meth:`batch_sizes` take: the train split in memory
    (:meth:`in_memory`) or the real input pipeline, cached and shuffled (:meth:`pipeline`).
    """

    name: ClassVar[str]  # distmis.backends name
    step_name: ClassVar[str]  # what one step is, for the table
    pipeline_name: ClassVar[str]
    dists: ClassVar[tuple[str, ...]]  # distributions whose versions the machine report shows
    env_keys: ClassVar[tuple[str, ...]]  # the framework's own thread and kernel variables

    @abstractmethod
    def __init__(self, cpus: int, info: DatasetInfo, settings: StepSettings) -> None: ...

    @classmethod
    def runtime_lines(cls) -> list[tuple[str, str]]:
        """Labelled facts about the framework's CPU kernels for the machine report."""
        return []

    @abstractmethod
    def thread_pools(self) -> tuple[int, int]:
        """This process's intra-op and inter-op pool sizes."""

    def notes(self) -> dict[str, object]:
        """Labelled facts the process report ends with."""
        return {}

    @abstractmethod
    def describe(self) -> str:
        """The model, optimiser and step in one line."""

    @abstractmethod
    def weights_checksum(self) -> float:
        """Sum of |w| over every weight and statistic: equal on both sides when seeded alike."""

    @abstractmethod
    def in_memory(self, info: DatasetInfo, batch: int) -> tuple[Any, int]:
        """The train split decoded into memory once, shuffled each pass, repeating; and the
        bytes it holds."""

    @abstractmethod
    def pipeline(self, info: DatasetInfo, batch: int, steps_per_epoch: int) -> Any:
        """The trial's input pipeline over the split: cached, shuffled, repeating, at least
        ``steps_per_epoch`` batches an epoch."""

    @abstractmethod
    def train(self, feed: Any, steps: int, epoch: int) -> float:
        """``steps`` training steps as the trial's ``train_epoch`` runs them, on epoch
        ``epoch`` of ``feed``; the mean training loss."""

    @abstractmethod
    def batch_sizes(self, feed: Any, epoch: int) -> Iterator[int]:
        """The batches of epoch ``epoch`` of ``feed``, drawn but not trained on: their sizes."""


@functools.cache
def node_cache_scope() -> Path:
    """This benchmark process's node-cache scope (as a local ``distmis train`` run creates),
    removed when the process exits."""
    from distmis.shards import node_cache

    scope = node_cache.CacheScope.create(node_cache.cache_root(), f"bench-{os.getpid()}")
    atexit.register(scope.remove)
    return scope.path


def load_backend(name: str) -> type[BenchBackend]:
    """The :class:`BenchBackend` of ``_train_<name>.py``; imports that framework alone."""
    return importlib.import_module(f"_train_{name}").BENCH


# ---------------------------------------------------------------- data


# The stamp beside a benchmark's data: the backends' runs may share a --workdir.
DATA_STAMP = "bench-train.json"


def training_dataset(
    root: Path, cases: int, source: tuple[int, int, int], shape: tuple[int, int, int], seed: int
) -> DatasetInfo:
    """Synthesise and convert ``cases`` (every one in the train split) under ``root``, or reuse
    an earlier run's data when it matches; returns its ``DatasetInfo``."""
    # Imported here, not at module level: a Ray worker importing this module needs neither.
    from distmis.prepare.convert import ConvertParams, convert_dataset
    from distmis.prepare.synthetic import synthesize_dataset

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


# ---------------------------------------------------------------- arguments

DEFAULT_SHAPE = (32, 32, 24)
DEFAULT_SOURCE_SHAPE = (40, 40, 28)


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """--cases, --shape, --source-shape, --batch, --steps, --repeats, --cpus, --workdir,
    --worker-niceness, --precision, --channels-last."""
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
        " backend's run (default: a temp dir)",
    )
    parser.add_argument(
        "--worker-niceness",
        type=int,
        help=f"diagnostic: the actor's runtime_env sets {RAY_WORKER_NICENESS}=N over the"
        " job's WORKER_ENV value (0); default: WORKER_ENV as training runs get it",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="torch only: autocast of (a) and (b), fp32 (off) or bf16 on the CPU (default fp32)",
    )
    parser.add_argument(
        "--channels-last",
        action="store_true",
        help="torch only: model and image batches of (a) and (b) in torch.channels_last_3d",
    )


def check_training_arguments(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> argparse.Namespace:
    """Fill the defaults that depend on other arguments and refuse impossible values."""
    from distmis import backends
    from distmis.errors import ConfigError

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
    if any(s % 2**DEPTH for s in args.shape):
        parser.error(f"every --shape axis must be divisible by {2**DEPTH} (U-Net depth {DEPTH})")
    # The switches asked for, as a run's backend_options: a backend without them refuses any.
    args.backend_options = {
        **({"precision": args.precision} if args.precision is not None else {}),
        **({"channels_last_3d": True} if args.channels_last else {}),
    }
    try:  # the check every run makes, so the benchmark refuses what training refuses
        backends.get(args.backend).check_options(args.backend_options, use_gpu=False)
    except ConfigError as error:
        parser.error(f"--backend {args.backend}: {error}")
    return args


# ---------------------------------------------------------------- timings


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


def timed(run: Callable[[], tuple[int, int, float]]) -> Timing:
    """Wall and CPU time of ``run()``, which returns its volumes, steps and loss."""
    cpu0, start = cpu_seconds(), time.perf_counter()
    volumes, steps, loss = run()
    return Timing(time.perf_counter() - start, cpu_seconds() - cpu0, volumes, steps, loss)


def fastest(timings: Iterable[Timing]) -> Timing:
    return min(timings, key=lambda timing: timing.seconds)


# ---------------------------------------------------------------- one side of the benchmark


class Trainer:
    """One process's side: the backend's step fed by the split in memory (``IN_MEMORY``,
    side (a), in the benchmark's process) or by the real pipeline (``PIPELINE``, side (b), in
    the Ray actor), and the pipeline alone (c).

    Every run trains on a new epoch of its feed, as training does. Built identically on both
    sides: the weights depend only on the seed.
    """

    def __init__(
        self,
        backend: str,
        tfrecord_dir: str,
        cpus: int,
        batch: int,
        steps: int,
        warm_steps: int,
        settings: StepSettings,
        feed: str,
    ) -> None:
        self.info = DatasetInfo.from_dir(Path(tfrecord_dir))
        self.batch, self.steps, self.warm_steps = batch, steps, warm_steps
        with quiet_stderr():  # TF's C++ start-up and CUDA-probe log lines
            self.backend = load_backend(backend)(cpus, self.info, settings)
            if feed == IN_MEMORY:
                self.feed, self.feed_bytes = self.backend.in_memory(self.info, batch)
            else:
                self.feed = self.backend.pipeline(self.info, batch, max(steps, warm_steps))
                self.feed_bytes = 0
            self.weights_checksum = self.backend.weights_checksum()  # before any step
        self.epoch = 0

    def report(self) -> dict:
        """:func:`process_report` of this process, with the initial weights' checksum."""
        return {
            **process_report(
                self.backend.env_keys,
                self.backend.name,
                *self.backend.thread_pools(),
                self.backend.notes(),
            ),
            "weights_checksum": self.weights_checksum,
        }

    def _run(self, steps: int) -> Timing:
        epoch, self.epoch = self.epoch, self.epoch + 1
        return timed(
            lambda: (steps * self.batch, steps, self.backend.train(self.feed, steps, epoch))
        )

    def warm_up(self) -> float:
        """A pass over the split and one batch more, untimed by the runs: first-call set-up
        (tracing, oneDNN primitives) and the pipeline's cache. Its seconds."""
        return self._run(self.warm_steps).seconds

    def timed_run(self) -> Timing:
        return self._run(self.steps)

    def time_pipeline(self, repeats: int) -> Timing:
        """Best of ``repeats``: ``steps`` batches of a fresh pipeline's epoch, no model, after
        one untimed pass that fills its cache (so: the cached steady state of every epoch after
        the first). Each epoch's first batch is drawn untimed (it starts the epoch's order and
        the prefetch threads)."""
        feed = self.backend.pipeline(self.info, self.batch, max(self.steps + 1, self.warm_steps))
        for _ in itertools.islice(self.backend.batch_sizes(feed, 0), self.warm_steps):
            pass

        def one_epoch(batches: Iterator[int]) -> tuple[int, int, float]:
            return sum(itertools.islice(batches, self.steps)), self.steps, math.nan

        runs = []
        for repeat in range(repeats):
            batches = self.backend.batch_sizes(feed, 1 + repeat)
            next(batches)
            runs.append(timed(lambda batches=batches: one_epoch(batches)))
        return fastest(runs)


# ---------------------------------------------------------------- processes and Ray


def process_report(
    env_keys: Iterable[str],
    framework: str,
    intra_op: int,
    inter_op: int,
    notes: Mapping[str, object] | None = None,
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
    backend: str, cpus: int, worker_niceness: int | None, *init_args
) -> Iterator[tuple[object, dict]]:
    """Ray started as a training run starts it (``start_ray`` with the backend's
    ``worker_env``) with ``cpus`` CPUs, and one ``Trainer(backend, *init_args)`` actor holding
    them all (its runtime_env adds ``RAY_worker_niceness`` = ``worker_niceness`` when given).
    Prints how Ray started; yields the actor and its ``report()``; kills it and stops Ray."""
    import ray

    from distmis import backends
    from distmis.train.runtime import WORKER_ENV, start_ray, stop_ray

    started = time.perf_counter()
    backend_env = backends.get(backend).worker_env
    resources = start_ray(None, backend_env, num_cpus=cpus, num_gpus=0)
    actor = None
    try:
        options: dict[str, Any] = {"num_cpus": cpus}
        if worker_niceness is not None:
            # Merged into the job's env_vars (Ray merges env_vars key by key).
            options["runtime_env"] = {"env_vars": {RAY_WORKER_NICENESS: str(worker_niceness)}}
        actor = ray.remote(**options)(Trainer).remote(backend, *init_args)
        report = ray.get(actor.report.remote())
        job_env = {**WORKER_ENV, **backend_env}
        print(
            f"\nray: started in {time.perf_counter() - started:.1f} s (not timed), resources"
            f" {resources}; job env_vars {job_env}; one actor with"
            f" {options}"
        )
        yield actor, report
    finally:
        if actor is not None:
            ray.kill(actor)
        stop_ray()


# ---------------------------------------------------------------- printing


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
    runs: dict[str, list[Timing]] = {name: [] for name in runners}
    for repeat in range(repeats):
        order = list(runners) if repeat % 2 == 0 else list(reversed(runners))
        for name in order:
            run = runners[name](repeat)
            runs[name].append(run)
            loss = "" if math.isnan(run.loss) else f"  loss {run.loss:.4f}"
            print(
                f"  repeat {repeat + 1}: {name:<4} {run.seconds:6.2f} s"
                f" {run.rate:6.2f} vol/s  cpu/wall {run.cpu_per_wall:4.2f}"
                f"  cpu {1000 * run.cpu_per_volume:5.1f} ms/vol{loss}"
                f"  (load average {loadavg()})"
            )
    return {name: fastest(timings) for name, timings in runs.items()}, runs


def print_table(rows: Sequence[tuple[str, Timing]], cpus: int, framework: str) -> None:
    """The results table, a titled row per timing, and what its CPU columns mean."""
    print(
        f"  {'what':<47}{'volumes/s':>10}{'seconds':>9}{'steps':>7}{'cpu/wall':>10}"
        f"{'cpu ms/vol':>12}"
    )
    for title, run in rows:
        print(
            f"  {title:<47}{run.rate:>10.2f}{run.seconds:>9.3f}{run.steps:>7}"
            f"{run.cpu_per_wall:>10.2f}{1000 * run.cpu_per_volume:>12.2f}"
        )
    print(
        "  cpu/wall: the process's CPU seconds (user + sys, all threads) per wall second;"
        f" near {cpus} when {framework} has the cpus to itself, lower when other processes"
        " take them. cpu ms/vol: CPU time per volume, the work done whoever got the cores."
    )


def print_ratios(best: dict[str, Timing], runs: dict[str, list[Timing]]) -> None:
    """The two targets from the best runs, (b) ray / (a) bare and (c) pipeline / (b) ray, and
    for reference (b) / (a) of the median runs and per CPU second."""
    ray_over_bare = best["ray"].rate / best["bare"].rate
    pipeline_over_ray = best["pipeline"].rate / best["ray"].rate
    print("\nratios")
    print(
        f"  (b) / (a) {'ray steps / bare steps:':<25}{ray_over_bare:6.2f}"
        f"  (target >= {TARGET_RAY_OVER_BARE})  {verdict(ray_over_bare >= TARGET_RAY_OVER_BARE)}"
    )
    print(
        f"  (c) / (b) {'pipeline / ray steps:':<25}{pipeline_over_ray:6.2f}"
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
