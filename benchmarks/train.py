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
(its ``worker_niceness``) unless told otherwise; ``WORKER_ENV`` tells it 0, and
``--worker-niceness N`` passes ``RAY_worker_niceness=N`` in the actor's env_vars instead, to
compare. A benchmark, not a test: it exits 0 unless something breaks.

    python benchmarks/train.py [--cases 12] [--shape 32 32 24] [--source-shape 40 40 28]
                               [--batch 2] [--steps 40] [--repeats 5] [--cpus N]
                               [--worker-niceness N] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from _common import loadavg, quiet_stderr  # noqa: E402
from _training import (  # noqa: E402
    AMSGRAD,
    BASE_FILTERS,
    BETA_2,
    DEPTH,
    LR,
    NORM,
    SEED,
    Timing,
    add_training_arguments,
    alternate_runs,
    check_training_arguments,
    cpu_seconds,
    print_machine,
    print_process,
    print_ratios,
    print_table,
    process_report,
    ray_actor,
    training_dataset,
    training_workdir,
)

import distmis.model  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS=1 before tensorflow loads)
from distmis.data.info import DatasetInfo  # noqa: E402

INTER_OP_THREADS = 2
# What TensorFlow reads to size thread pools or pick kernels (process_report adds the C
# runtime's and Ray's).
ENV_KEYS = (
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
    "TF_ENABLE_ONEDNN_OPTS",
    "TF_USE_LEGACY_KERAS",
    "TF_CPP_MIN_LOG_LEVEL",
)


# ---------------------------------------------------------------- shared by both processes


def _set_threads(cpus: int) -> None:
    """Same values as ``distmis.train.loop._limit_threads``; before the TF runtime starts."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(cpus)
    tf.config.threading.set_inter_op_parallelism_threads(INTER_OP_THREADS)


def _process_report() -> dict:
    """``process_report`` of this process with TF's thread pools."""
    import tensorflow as tf

    return process_report(
        ENV_KEYS,
        "tf",
        tf.config.threading.get_intra_op_parallelism_threads(),
        tf.config.threading.get_inter_op_parallelism_threads(),
    )


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
    cpu0, start = cpu_seconds(), time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, **kwargs)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
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
        cpu0, start = cpu_seconds(), time.perf_counter()
        volumes = 0
        for _ in range(steps):
            image, _label = next(iterator)
            volumes += int(image.shape[0])
        seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
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


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_training_arguments(parser)
    return check_training_arguments(parser, parser.parse_args(argv), DEPTH)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    cpus, batch, steps = args.cpus, args.batch, args.steps
    print_machine(cpus, ("numpy", "tensorflow", "tf-keras", "ray"))

    with training_workdir(args.workdir) as workdir:
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

        with ray_actor(
            RayTrainer, cpus, args.worker_niceness, str(info.root), cpus, batch, warm_steps
        ) as (actor, worker_report):
            print("processes")
            print_process("(a) bare", _process_report())
            print_process("(b) ray actor", worker_report)

            print(f"\nwarm-up (not timed; load average {loadavg()})")
            start = time.perf_counter()
            model.fit(x, y, batch_size=batch, steps_per_epoch=warm_steps, epochs=1, verbose=0)
            print(f"  (a) bare: {time.perf_counter() - start:.1f} s")
            print(f"  (b) ray:  {ray.get(actor.warm_up.remote()):.1f} s")

            print(
                f"\nruns: fit(steps_per_epoch={steps}, epochs=1), (a) and (b) alternating,"
                " order swapped every repeat (a b, b a, ...)"
            )
            best, runs = alternate_runs(
                args.repeats,
                {
                    "bare": lambda repeat: _timed_fit(
                        model, x, batch, steps, y=y, batch_size=batch, shuffle=True
                    ),
                    "ray": lambda repeat: ray.get(actor.timed_fit.remote(steps)),
                },
            )

            print("\npipeline alone (cache=True; timed after one full untimed pass)")
            best["pipeline"] = _time_pipeline(
                _pipeline(info, batch), batch, steps, warm_steps, args.repeats
            )
            best["pipeline_ray"] = ray.get(actor.time_pipeline.remote(steps, args.repeats))

        print(
            f"\nresults: {tuple(info.image_shape)} volumes, batch {batch}, {cpus} cpus"
            f" (intra_op {cpus}, inter_op {INTER_OP_THREADS}), best of {args.repeats}"
        )
        print_table(
            (
                ("(a) bare tf_keras fit, numpy in memory", best["bare"]),
                ("(b) fit in 1 Ray actor, TFRecord pipeline", best["ray"]),
                ("(c) pipeline alone, cached, no model", best["pipeline"]),
                ("    (c in the Ray actor, reference)", best["pipeline_ray"]),
            ),
            cpus,
            "TF",
        )
        print_ratios(best, runs, "fit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
