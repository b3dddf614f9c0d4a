"""Benchmark the real training step bare against the same step in a Ray actor fed by the real
input pipeline, for ``--backend tensorflow`` or ``torch``.

Synthesises ``--cases`` small BraTS-like cases (``--source-shape``, default 40×40×28),
converts them to TFRecords of ``--shape`` (default 32×32×24, four channels, binary labels,
every case in the train split) and measures volumes/s, at that one volume size, of the
training loop's own step and optimiser (U-Net depth 3, base 8, batch norm, Adam lr 1e-3
with Keras' β₁ 0.9, ε 1e-7):

- tensorflow: one ``fit_epoch`` (``model.fit`` of ``steps`` steps, what a trial's
  ``train_epoch`` calls) of ``compiled_unet``;
- torch: the ``TrainingStep`` of ``distmis.backends.torch.loop`` (zero the gradients,
  forward under ``torch.autocast`` for ``--precision bf16``, soft Dice in float32, backward,
  Adam, Dice) on the model and optimiser the trial builds (``adam``, ``memory_format``;
  ``--channels-last`` for ``channels_last_3d``), with the loss and Dice read on the host
  every step as ``train_epoch`` does;

three ways:

(a) BARE: the step on the train split decoded into memory once (tensors, reshuffled every
    pass), in this process;
(b) RAY: the same step fed by the trial's pipeline (``make_dataset`` / ``EpochBatches``, with
    ``shuffle=True, seed=0, cache=True``), inside ONE Ray actor holding all ``--cpus`` CPUs,
    with Ray started as training starts it (``start_ray(None, backend.worker_env, N, 0)``,
    so workers get ``WORKER_ENV``: nice 0);
(c) PIPELINE: the same pipeline iterated for the same number of batches, no model, in this
    process (and, for reference, inside the Ray actor as well).

Both sides limit threads with the loop's own ``limit_threads(N)`` (intra-op N, inter-op
``min(2, N)``) and start from the same initial weights (seed 0; a checksum of each is
printed). Each side first runs one untimed warm-up epoch (a pass over the split and one batch
more: tracing, oneDNN primitives, the pipeline's cache), then ``--steps`` steps are timed with
``perf_counter``, one epoch each; (a) and (b) alternate (order swapped every repeat), best of
``--repeats``. The pipeline is timed after an untimed full pass, so it measures the cached
steady state. Beside wall time each run reports the process's CPU time (user + sys, all
threads) per wall second, which shows whether both processes got the same number of cores,
and CPU time per volume, which shows whether they did the same work. Prints the machine, what
decides each process's share of the cores (affinity, nice value, CFS autogroup, thread pools,
the thread variables Ray sets in workers), a table and two ratios with targets:
RAY / BARE >= 0.9 and PIPELINE / RAY >= 5. ``--worker-niceness N`` sets
``RAY_worker_niceness=N`` in the actor's env_vars, to compare. The backends' runs may share a
``--workdir`` (same data). A benchmark, not a test: it exits 0 unless something breaks.

    python benchmarks/train.py --backend {tensorflow,torch}
                               [--cases 12] [--shape 32 32 24] [--source-shape 40 40 28]
                               [--batch 2] [--steps 40] [--repeats 5] [--cpus N]
                               [--precision {fp32,bf16}] [--channels-last]  (torch only)
                               [--worker-niceness N] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # inherited by the conversion's workers

from _common import loadavg, print_machine, quiet_stderr  # noqa: E402
from _training import (  # noqa: E402
    IN_MEMORY,
    PIPELINE,
    SEED,
    StepSettings,
    Trainer,
    add_training_arguments,
    alternate_runs,
    check_training_arguments,
    load_backend,
    print_process,
    print_ratios,
    print_table,
    ray_actor,
    training_dataset,
    training_workdir,
)

from distmis import backends  # noqa: E402


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--backend", choices=backends.NAMES, required=True, help="whose training step to time"
    )
    add_training_arguments(parser)
    return check_training_arguments(parser, parser.parse_args(argv))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    cpus, batch, steps = args.cpus, args.batch, args.steps
    backend = load_backend(args.backend)
    print_machine(cpus, backend.dists, backend.runtime_lines())

    with training_workdir(args.workdir) as workdir:
        print("\ndata")
        with quiet_stderr():  # TF's C++ start-up lines, in the conversion's worker process
            info = training_dataset(workdir, args.cases, args.source_shape, args.shape, SEED)
        count = info.count("train")
        warm_steps = math.ceil(count / batch) + 1
        settings = StepSettings(backend_options=args.backend_options)
        side = (str(info.root), cpus, batch, steps, warm_steps, settings)
        bare = Trainer(args.backend, *side, IN_MEMORY)
        print(
            f"  train split: {count} volumes {tuple(info.image_shape)}, labels"
            f" {tuple(info.label_shape)} {list(info.label_channels)}; (a)'s copy in memory"
            f" {bare.feed_bytes / 1e6:.1f} MB"
        )
        print(f"  model: {bare.backend.describe()}")
        print(f"  batch {batch}; {steps} timed steps; warm-up epoch {warm_steps} steps")

        import ray

        with ray_actor(args.backend, cpus, args.worker_niceness, *side, PIPELINE) as (
            actor,
            worker_report,
        ):
            print("processes")
            print_process("(a) bare", bare.report())
            print_process("(b) ray actor", worker_report)
            ours, theirs = bare.weights_checksum, worker_report["weights_checksum"]
            print(
                f"  initial weights: checksum (sum |w|) {ours:.6f} bare, {theirs:.6f} ray:"
                f" {'identical' if ours == theirs else 'DIFFER'}"
            )

            print(f"\nwarm-up (not timed; load average {loadavg()})")
            print(f"  (a) bare: {bare.warm_up():.1f} s")
            print(f"  (b) ray:  {ray.get(actor.warm_up.remote()):.1f} s")

            print(
                f"\nruns: {steps} steps ({backend.step_name}), (a) and (b) alternating, order"
                " swapped every repeat (a b, b a, ...); loss: the run's mean training loss"
            )
            best, runs = alternate_runs(
                args.repeats,
                {
                    "bare": lambda repeat: bare.timed_run(),
                    "ray": lambda repeat: ray.get(actor.timed_run.remote()),
                },
            )

            print("\npipeline alone (cache=True; timed after one full untimed pass)")
            best["pipeline"] = bare.time_pipeline(args.repeats)
            best["pipeline_ray"] = ray.get(actor.time_pipeline.remote(args.repeats))

        threads = bare.backend.thread_pools()
        print(
            f"\nresults: {args.backend}, {tuple(info.image_shape)} volumes, batch {batch},"
            f" {cpus} cpus (intra_op {threads[0]}, inter_op {threads[1]}), precision"
            f" {args.precision or 'fp32'}{', channels_last_3d' if args.channels_last else ''},"
            f" best of {args.repeats}"
        )
        print_table(
            (
                (f"(a) bare {backend.step_name}, tensors in memory", best["bare"]),
                (f"(b) {backend.step_name} in 1 Ray actor, {backend.pipeline_name}", best["ray"]),
                ("(c) pipeline alone, cached, no model", best["pipeline"]),
                ("    (c in the Ray actor, reference)", best["pipeline_ray"]),
            ),
            cpus,
            args.backend,
        )
        print_ratios(best, runs)
        other = next(name for name in backends.NAMES if name != args.backend)
        print(
            f"  {other} on the same data: python benchmarks/train.py --backend {other}"
            f" --workdir DIR --batch {batch} --steps {steps} --cpus {cpus}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
