"""Benchmark training throughput: a bare tf_keras loop against the same fit in a Ray worker.

Synthesises ``--cases`` small BraTS-like cases (``--source-shape``, default 40×40×28),
converts them to TFRecords of ``--shape`` (default 32×32×24, four channels, binary labels,
every case in the train split) and measures volumes/s, at that one volume size, of:

(a) BARE: ``model.fit`` of the U-Net (depth 3, base 8, batch norm, Adam) on in-memory numpy
    arrays (``load_arrays(info, "train")``, tiled to fill the steps), in this process;
(b) RAY: the same model and batch fed by the TFRecord pipeline
    (``make_dataset(..., shuffle=True, seed=0, cache=True, repeat=True)``) inside ONE Ray
    actor that holds all ``--cpus`` CPUs (``start_ray(None, num_cpus=N, num_gpus=0)``,
    ``runtime_env`` env_vars from ``WORKER_ENV``);
(c) PIPELINE: the same ``make_dataset`` iterated for the same number of batches, no model,
    in this process (and, for reference, inside the Ray actor as well).

Both fits use the same thread settings (``tf.config.threading`` intra = N, inter = 2, as
``distmis.train.loop`` sets them for a worker of N CPUs) and the same initial weights. Each
fit first runs one untimed warm-up epoch (tracing, first-call set-up, and a full pass that
fills the tf.data cache), then ``fit(steps_per_epoch=S, epochs=1)`` is timed with
``perf_counter``; (a) and (b) alternate (order swapped every repeat), best of ``--repeats``.
The pipeline is timed after an untimed full pass, so with ``cache=True`` it measures the
cached steady state. Beside wall time each fit reports the process's CPU time (user + sys,
all threads) per wall second, which shows whether both processes got the same number of
cores, and CPU time per volume, which shows whether they did the same work. Prints the
machine, what decides each process's share of the cores (affinity, nice value, CFS autogroup,
TF thread pools, the thread variables Ray sets in workers), a table and two ratios with
targets: RAY / BARE >= 0.9 and PIPELINE / RAY >= 5. Ray starts its workers at nice 15
(its ``worker_niceness``); ``--worker-niceness 0`` passes ``RAY_worker_niceness=0`` in the
actor's env_vars to compare. A benchmark, not a test: it exits 0 unless something breaks.

    python benchmarks/train.py [--cases 12] [--shape 32 32 24] [--source-shape 40 40 28]
                               [--batch 2] [--steps 40] [--repeats 5] [--cpus N]
                               [--worker-niceness N] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from _common import (  # noqa: E402
    add_training_arguments,
    check_training_arguments,
    loadavg,
    quiet_stderr,
    training_dataset,
    verdict,
    version,
)

import distmis.model  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS=1 before tensorflow loads)
from distmis.data.info import DatasetInfo  # noqa: E402

SEED = 0
DEPTH = 3
BASE_FILTERS = 8
NORM = "batch"
LR, BETA_2, AMSGRAD = 1e-3, 0.999, False
INTER_OP_THREADS = 2
# Ray's config knob (ray_constants.RAY_WORKER_NICENESS): the nice value workers start with.
RAY_WORKER_NICENESS = "RAY_worker_niceness"
TARGET_RAY_OVER_BARE = 0.9
TARGET_PIPELINE_OVER_RAY = 5.0
# What Ray, TensorFlow or the C runtime read to size thread pools or pick devices.
ENV_KEYS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
    "TF_ENABLE_ONEDNN_OPTS",
    "TF_USE_LEGACY_KERAS",
    "TF_CPP_MIN_LOG_LEVEL",
    "CUDA_VISIBLE_DEVICES",
    "LD_PRELOAD",
    "MALLOC_ARENA_MAX",
    RAY_WORKER_NICENESS,
)


# ---------------------------------------------------------------- shared by both processes


@dataclass(frozen=True)
class Timing:
    """One timed section."""

    seconds: float  # wall clock
    cpu: float  # process user + sys over the section, all threads
    volumes: int
    steps: int

    @property
    def rate(self) -> float:
        return self.volumes / self.seconds

    @property
    def cpu_per_wall(self) -> float:
        return self.cpu / self.seconds


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _set_threads(cpus: int) -> None:
    """Same values as ``distmis.train.loop._limit_threads``; before the TF runtime starts."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(cpus)
    tf.config.threading.set_inter_op_parallelism_threads(INTER_OP_THREADS)


def _process_report() -> dict:
    """Where and how this process runs: the facts that decide how many cores TF uses."""
    import tensorflow as tf

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    return {
        "pid": os.getpid(),
        "affinity_cpus": affinity,
        "nice": os.nice(0),
        "session": os.getsid(0),
        "autogroup": _autogroup(),
        "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        "threads_now": _thread_count(),
        "env": {k: os.environ.get(k, "(unset)") for k in ENV_KEYS},
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


def _build_model(info: DatasetInfo):
    import tf_keras as keras

    from distmis.model.losses import compile_unet
    from distmis.model.unet import build_unet

    keras.utils.set_random_seed(SEED)
    model = build_unet(
        tuple(info.image_shape),
        len(info.label_channels),
        depth=DEPTH,
        base_filters=BASE_FILTERS,
        norm=NORM,
        seed=SEED,
    )
    return compile_unet(model, LR, BETA_2, AMSGRAD, info.label_channels)


def _timed_fit(model, data, batch: int, steps: int, **kwargs) -> Timing:
    cpu0, start = _cpu_seconds(), time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, **kwargs)
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu0
    return Timing(seconds, cpu, steps * batch, steps)


def _pipeline(info: DatasetInfo, batch: int):
    from distmis.train.dataset import make_dataset

    return make_dataset(info, "train", batch, shuffle=True, seed=SEED, cache=True, repeat=True)


def _time_pipeline(dataset, batch: int, steps: int, warm_steps: int, repeats: int) -> Timing:
    """Best of ``repeats``: ``steps`` batches from a fresh iterator after one untimed full pass.

    The pass fills ``cache()``, whose memory outlives the iterator, so later iterators read
    decoded records from memory: the steady state of every epoch after the first.
    """
    for _ in zip(range(warm_steps), dataset, strict=False):
        pass
    best = None
    for _ in range(repeats):
        iterator = iter(dataset)
        next(iterator)  # starts the prefetch threads; not timed
        cpu0, start = _cpu_seconds(), time.perf_counter()
        volumes = 0
        for _ in range(steps):
            image, _label = next(iterator)
            volumes += int(image.shape[0])
        seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu0
        timing = Timing(seconds, cpu, volumes, steps)
        if best is None or timing.seconds < best.seconds:
            best = timing
    return best


# ---------------------------------------------------------------- (b): the Ray side


class RayTrainer:
    """One Ray actor holding every CPU: the TFRecord-fed fit and the pipeline alone."""

    def __init__(self, tfrecord_dir: str, cpus: int, batch: int, warm_steps: int) -> None:
        with quiet_stderr():  # TF's C++ start-up and CUDA-probe log lines
            _set_threads(cpus)  # before anything below starts the TF runtime
            self.info = DatasetInfo.from_dir(Path(tfrecord_dir))
            self.batch = batch
            self.warm_steps = warm_steps
            self.model = _build_model(self.info)
            self.data = _pipeline(self.info, batch)

    def report(self) -> dict:
        return _process_report()

    def warm_up(self) -> float:
        start = time.perf_counter()
        self.model.fit(self.data, steps_per_epoch=self.warm_steps, epochs=1, verbose=0)
        return time.perf_counter() - start

    def timed_fit(self, steps: int) -> Timing:
        return _timed_fit(self.model, self.data, self.batch, steps)

    def time_pipeline(self, steps: int, repeats: int) -> Timing:
        dataset = _pipeline(self.info, self.batch)
        return _time_pipeline(dataset, self.batch, steps, self.warm_steps, repeats)


# ---------------------------------------------------------------- driver


def _print_machine(cpus: int) -> None:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    print("machine")
    print(f"  cpus        {os.cpu_count()} (usable by this process: {usable}; given: {cpus})")
    print(f"  platform    {platform.platform()} ({platform.processor() or platform.machine()})")
    print(f"  python      {sys.version.split()[0]} ({platform.python_implementation()})")
    for dist in ("numpy", "tensorflow", "tf-keras", "ray"):
        print(f"  {dist:<11} {version(dist)}")
    print(f"  load avg    {loadavg()} (1, 5, 15 min)")


def _print_process(title: str, report: dict) -> None:
    env = " ".join(f"{k}={v}" for k, v in report["env"].items() if v != "(unset)")
    print(
        f"  {title:<13} pid {report['pid']}: affinity {report['affinity_cpus']} cpus,"
        f" nice {report['nice']}, session {report['session']} ({report['autogroup']}),"
        f" tf intra_op {report['intra_op']} inter_op"
        f" {report['inter_op']}, {report['threads_now']} threads"
    )
    print(f"  {'':<13} env: {env or '(none of interest set)'}")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_training_arguments(parser)
    parser.add_argument(
        "--worker-niceness",
        type=int,
        help=f"diagnostic: also pass {RAY_WORKER_NICENESS}=N in the actor's env_vars (Ray starts"
        " workers at nice 15 by default); default: leave Ray's setting alone",
    )
    return check_training_arguments(parser, parser.parse_args(argv), DEPTH)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    cpus, batch, steps = args.cpus, args.batch, args.steps
    _print_machine(cpus)

    own_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="distmis-bench-train-")) if own_workdir else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        print("\ndata")
        with quiet_stderr():  # TF's C++ start-up lines, here and in conversion workers
            info = training_dataset(workdir, args.cases, args.source_shape, args.shape, SEED)
        count = info.count("train")
        # A full pass and one batch more: fills cache() and traces the train step.
        warm_steps = math.ceil(count / batch) + 1

        # (a) in this process. Thread settings first: load_arrays starts the TF runtime.
        import numpy as np

        with quiet_stderr():
            from distmis.train.dataset import load_arrays

            _set_threads(cpus)
            images, labels = load_arrays(info, "train")
        reps = math.ceil(steps * batch / len(images))
        x, y = np.concatenate([images] * reps), np.concatenate([labels] * reps)
        print(
            f"  train split: {count} volumes {tuple(info.image_shape)}, labels"
            f" {tuple(info.label_shape)} {list(info.label_channels)}; in-memory copy tiled"
            f" {reps}x to {len(x)} volumes ({(x.nbytes + y.nbytes) / 1e6:.0f} MB)"
        )
        model = _build_model(info)
        print(
            f"  model: {model.name}, {model.count_params()} parameters; Adam lr {LR};"
            f" batch {batch}; {steps} timed steps; warm-up epoch {warm_steps} steps"
        )

        import ray

        from distmis.train.runtime import WORKER_ENV, start_ray, stop_ray

        started = time.perf_counter()
        resources = start_ray(None, num_cpus=cpus, num_gpus=0)
        env_vars = dict(WORKER_ENV)
        if args.worker_niceness is not None:
            env_vars[RAY_WORKER_NICENESS] = str(args.worker_niceness)
        actor_cls = ray.remote(num_cpus=cpus, runtime_env={"env_vars": env_vars})(RayTrainer)
        actor = actor_cls.remote(str(info.root), cpus, batch, warm_steps)
        worker_report = ray.get(actor.report.remote())
        print(
            f"\nray: started in {time.perf_counter() - started:.1f} s (not timed), resources"
            f" {resources}; one actor with num_cpus={cpus}, runtime_env env_vars {env_vars}"
        )
        print("processes")
        _print_process("(a) bare", _process_report())
        _print_process("(b) ray actor", worker_report)

        try:
            print(f"\nwarm-up (not timed; load average {loadavg()})")
            start = time.perf_counter()
            model.fit(x, y, batch_size=batch, steps_per_epoch=warm_steps, epochs=1, verbose=0)
            print(f"  (a) bare: {time.perf_counter() - start:.1f} s")
            print(f"  (b) ray:  {ray.get(actor.warm_up.remote()):.1f} s")

            print(
                f"\nruns: fit(steps_per_epoch={steps}, epochs=1), (a) and (b) alternating,"
                " order swapped every repeat (a b, b a, ...)"
            )
            best: dict[str, Timing] = {}
            runs: dict[str, list[Timing]] = {"bare": [], "ray": []}
            for repeat in range(args.repeats):
                order = ("bare", "ray") if repeat % 2 == 0 else ("ray", "bare")
                for name in order:
                    if name == "bare":
                        run = _timed_fit(
                            model, x, batch, steps, y=y, batch_size=batch, shuffle=True
                        )
                    else:
                        run = ray.get(actor.timed_fit.remote(steps))
                    runs[name].append(run)
                    if name not in best or run.seconds < best[name].seconds:
                        best[name] = run
                    print(
                        f"  repeat {repeat + 1}: {name:<4} {run.seconds:6.2f} s"
                        f" {run.rate:6.2f} vol/s  cpu/wall {run.cpu_per_wall:4.2f}"
                        f"  cpu {1000 * run.cpu / run.volumes:5.1f} ms/vol"
                        f"  (load average {loadavg()})"
                    )

            print("\npipeline alone (cache=True; timed after one full untimed pass)")
            best["pipeline"] = _time_pipeline(
                _pipeline(info, batch), batch, steps, warm_steps, args.repeats
            )
            best["pipeline_ray"] = ray.get(actor.time_pipeline.remote(steps, args.repeats))
        finally:
            ray.kill(actor)
            stop_ray()

        rows = (
            ("(a) bare tf_keras fit, numpy in memory", best["bare"]),
            ("(b) fit in 1 Ray actor, TFRecord pipeline", best["ray"]),
            ("(c) pipeline alone, cached, no model", best["pipeline"]),
            ("    (c in the Ray actor, reference)", best["pipeline_ray"]),
        )
        print(
            f"\nresults: {tuple(info.image_shape)} volumes, batch {batch}, {cpus} cpus"
            f" (intra_op {cpus}, inter_op {INTER_OP_THREADS}), best of {args.repeats}"
        )
        print(
            f"  {'what':<43}{'volumes/s':>10}{'seconds':>9}{'steps':>7}{'cpu/wall':>10}"
            f"{'cpu ms/vol':>12}"
        )
        for title, run in rows:
            print(
                f"  {title:<43}{run.rate:>10.2f}{run.seconds:>9.3f}{run.steps:>7}"
                f"{run.cpu_per_wall:>10.2f}{1000 * run.cpu / run.volumes:>12.2f}"
            )
        print(
            "  cpu/wall: the process's CPU seconds (user + sys, all threads) per wall second;"
            f" near {cpus} when TF has the cpus to itself, lower when other processes take"
            " them. cpu ms/vol: CPU time per volume, the work done whoever got the cores."
        )

        ray_over_bare = best["ray"].rate / best["bare"].rate
        pipeline_over_ray = best["pipeline"].rate / best["ray"].rate
        print("\nratios")
        print(
            f"  (b) / (a) ray fit / bare fit:      {ray_over_bare:6.2f}"
            f"  (target >= {TARGET_RAY_OVER_BARE})  {verdict(ray_over_bare >= TARGET_RAY_OVER_BARE)}"
        )
        print(
            f"  (c) / (b) pipeline / ray fit:      {pipeline_over_ray:6.2f}"
            f"  (target >= {TARGET_PIPELINE_OVER_RAY:g})"
            f"  {verdict(pipeline_over_ray >= TARGET_PIPELINE_OVER_RAY)}"
        )
        median_ratio = statistics.median(r.rate for r in runs["ray"]) / statistics.median(
            r.rate for r in runs["bare"]
        )
        cpu_ratio = (best["bare"].cpu / best["bare"].volumes) / (
            best["ray"].cpu / best["ray"].volumes
        )
        print(
            f"  (for reference, not targets: (b) / (a) of the median runs {median_ratio:.2f};"
            f" (b) / (a) in volumes per CPU second, best runs, {cpu_ratio:.2f}, which other"
            " load on the machine disturbs far less than wall time)"
        )
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
