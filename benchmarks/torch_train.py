"""Benchmark PyTorch training throughput: a bare torch loop against the same loop in a Ray worker.

The PyTorch counterpart of ``benchmarks/train.py``, on the same synthetic data (the two share
a ``--workdir``). Synthesises ``--cases`` small BraTS-like cases (``--source-shape``, default
40×40×28), converts them to TFRecords of ``--shape`` (default 32×32×24, four channels, binary
labels, every case in the train split) and measures volumes/s, at that one volume size, of:

(a) BARE: training steps of the torch U-Net (``build_unet_torch``, depth 3, base 8, batch
    norm), Adam (lr 1e-3, betas (0.9, 0.999), eps 1e-7) and the soft Dice loss
    (``soft_dice_per_sample``) on in-memory tensors (the train split, tiled to fill the steps,
    a batch gathered per step from a seeded per-run permutation), in this process;
(b) RAY: the same steps fed by the torch pipeline (``EpochBatches(..., shuffle=True, seed=0,
    cache=True, steps_per_epoch=S)``, one ``epoch(e)`` per run) inside ONE Ray actor that
    holds all ``--cpus`` CPUs (``start_ray(None, num_cpus=N, num_gpus=0)``, ``runtime_env``
    env_vars from ``WORKER_ENV``);
(c) PIPELINE: the same ``EpochBatches`` iterated for the same number of batches, no model,
    in this process (and, for reference, inside the Ray actor as well).

A step is the step of ``distmis.train.torch_loop``: zero the gradients, forward under
``torch.autocast`` (enabled for ``--precision bf16``), the loss in float32, backward, Adam,
and the per-step Dice metric; ``--channels-last`` puts the model and each image batch in
``torch.channels_last_3d``. Both apply to (a) and (b) alike. Both loops use the same thread
settings (``torch.set_num_threads(N)`` and interop ``min(2, N)``, by
``distmis.train.torch_loop._limit_threads`` itself) and the same initial weights (seed 0;
a checksum of each is printed). Each loop first runs one untimed warm-up epoch (a pass over
the split and one batch more: first-call set-up, oneDNN primitives, and the pipeline's
cache), then ``S`` steps are timed with ``perf_counter``; (a) and (b) alternate (order
swapped every repeat), best of ``--repeats``. The pipeline is timed after an untimed full
pass, so with ``cache=True`` it measures the cached steady state. Beside wall time each run
reports the process's CPU time (user + sys, all threads) per wall second, which shows whether
both processes got the same number of cores, and CPU time per volume, which shows whether they
did the same work. Prints the machine, what decides each process's share of the cores
(affinity, nice value, CFS autogroup, torch thread pools, the thread variables Ray sets in
workers), a table and two ratios with targets: RAY / BARE >= 0.9 and PIPELINE / RAY >= 5.
TensorFlow is never imported (the conversion runs it in its own processes): compare with
``benchmarks/train.py`` run on the same ``--workdir``, ``--batch``, ``--steps`` and ``--cpus``.
A benchmark, not a test: it exits 0 unless something breaks.

    python benchmarks/torch_train.py [--cases 12] [--shape 32 32 24] [--source-shape 40 40 28]
                                     [--batch 2] [--steps 40] [--repeats 5] [--cpus N]
                                     [--precision {fp32,bf16}] [--channels-last]
                                     [--worker-niceness N] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import itertools
import math
import platform
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from _common import loadavg, quiet_stderr
from _training import (
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

from distmis.data.info import DatasetInfo

PRECISIONS = ("fp32", "bf16")
# What PyTorch's OpenMP and oneDNN read to place threads or pick kernels (process_report
# adds the thread-count, allocator and Ray variables).
ENV_KEYS = (
    "KMP_AFFINITY",
    "KMP_BLOCKTIME",
    "OMP_WAIT_POLICY",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
)


# ---------------------------------------------------------------- shared by both processes


def _set_threads(cpus: int) -> None:
    """The training loop's own thread settings; before anything runs inter-op work."""
    from distmis.train.torch_loop import _limit_threads

    _limit_threads(cpus)


def _process_report() -> dict:
    """``process_report`` of this process with torch's thread pools, and whether anything
    loaded TensorFlow into it."""
    import torch

    return process_report(
        ENV_KEYS,
        "torch",
        torch.get_num_threads(),
        torch.get_num_interop_threads(),
        {"tensorflow loaded": "tensorflow" in sys.modules},
    )


class Trainer:
    """The model, optimiser and step of ``distmis.train.torch_loop``, on the CPU.

    ``images`` ``(B, C, X, Y, Z)`` and ``labels`` ``(B, K, X, Y, Z)`` float32, as the
    pipeline yields them. Built identically in both processes: the weights depend only on
    the seed.
    """

    def __init__(
        self, in_channels: int, out_channels: int, precision: str, channels_last: bool
    ) -> None:
        import torch

        from distmis.torch_backend.unet import build_unet_torch
        from distmis.train.torch_loop import ADAM_BETA_1, ADAM_EPSILON, AUTOCAST_DTYPES

        self.memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
        self.model = build_unet_torch(
            in_channels, out_channels, depth=DEPTH, base_filters=BASE_FILTERS, norm=NORM, seed=SEED
        ).to(memory_format=self.memory_format)
        self.weights_checksum = float(
            sum(t.double().abs().sum() for t in self.model.state_dict().values())
        )
        self.optimizer = torch.optim.Adam(
            self.model.parameters(),
            lr=LR,
            betas=(ADAM_BETA_1, BETA_2),
            eps=ADAM_EPSILON,
            amsgrad=AMSGRAD,
        )
        self.autocast = dict(
            device_type="cpu",
            dtype=getattr(torch, AUTOCAST_DTYPES.get(precision, "bfloat16")),
            enabled=precision != "fp32",
        )
        self.model.train()

    def parameters(self) -> int:
        from distmis.torch_backend.unet import count_parameters

        return count_parameters(self.model)

    def run(self, batches: Iterable) -> Timing:
        """Train on every batch of ``batches``; wall and CPU time include drawing them."""
        import torch

        from distmis.torch_backend.losses import dice_coefficient, soft_dice_per_sample

        loss_sum, volumes, steps = 0.0, 0, 0
        cpu0, start = cpu_seconds(), time.perf_counter()
        for images, labels in batches:
            images = images.to(memory_format=self.memory_format)
            self.optimizer.zero_grad(set_to_none=True)
            with torch.autocast(**self.autocast):
                probabilities = self.model(images)
            loss_per_sample = soft_dice_per_sample(labels, probabilities)
            loss_per_sample.mean().backward()
            self.optimizer.step()
            with torch.no_grad():
                # As torch_loop's _EpochSums.add: the host reads the loss and Dice every step.
                loss_sum += float(loss_per_sample.sum())
                dice_coefficient(labels, probabilities).sum(dim=0).tolist()
            volumes += int(images.shape[0])
            steps += 1
        seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
        return Timing(seconds, cpu, volumes, steps, loss_sum / max(1, volumes))


def _pipeline(tfrecord_dir: str, batch: int, steps: int):
    from distmis.torch_backend.data import EpochBatches

    return EpochBatches(
        tfrecord_dir, "train", batch, shuffle=True, seed=SEED, cache=True, steps_per_epoch=steps
    )


def _time_pipeline(batches, warm_steps: int, repeats: int, first_epoch: int) -> Timing:
    """Best of ``repeats``: one epoch (``steps_per_epoch`` batches) each, after one untimed
    pass of ``warm_steps`` batches that fills the cache (epochs ``first_epoch``, ...)."""
    for _ in itertools.islice(batches.epoch(first_epoch), warm_steps):
        pass
    best = None
    for repeat in range(repeats):
        cpu0, start = cpu_seconds(), time.perf_counter()
        volumes = steps = 0
        for images, _labels in batches.epoch(first_epoch + 1 + repeat):
            volumes += int(images.shape[0])
            steps += 1
        seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
        timing = Timing(seconds, cpu, volumes, steps)
        if best is None or timing.seconds < best.seconds:
            best = timing
    return best


# ---------------------------------------------------------------- (b): the Ray side


class RayTrainer:
    """One Ray actor holding every CPU: the pipeline-fed steps and the pipeline alone."""

    def __init__(
        self,
        tfrecord_dir: str,
        cpus: int,
        batch: int,
        steps: int,
        warm_steps: int,
        precision: str,
        channels_last: bool,
    ) -> None:
        _set_threads(cpus)  # before the model or the pipeline runs anything
        info = DatasetInfo.from_dir(Path(tfrecord_dir))
        self.tfrecord_dir, self.batch, self.steps = tfrecord_dir, batch, steps
        self.warm_steps = warm_steps
        self.trainer = Trainer(
            int(info.image_shape[-1]), len(info.label_channels), precision, channels_last
        )
        self.batches = _pipeline(tfrecord_dir, batch, steps)
        self.epoch = 0  # each run trains on a new epoch's order, as training does

    def report(self) -> dict:
        return {**_process_report(), "weights_checksum": self.trainer.weights_checksum}

    def warm_up(self) -> float:
        start = time.perf_counter()
        self.trainer.run(itertools.islice(self.batches.epoch(self.epoch), self.warm_steps))
        self.epoch += 1
        return time.perf_counter() - start

    def timed_run(self) -> Timing:
        timing = self.trainer.run(self.batches.epoch(self.epoch))
        self.epoch += 1
        return timing

    def time_pipeline(self, repeats: int) -> Timing:
        batches = _pipeline(self.tfrecord_dir, self.batch, self.steps)
        return _time_pipeline(batches, self.warm_steps, repeats, first_epoch=0)


# ---------------------------------------------------------------- (a): the bare side


def _in_memory(info: DatasetInfo, batch: int, steps: int):
    """The train split as tensors ``(N, C, X, Y, Z)``, ``(N, K, X, Y, Z)``, read once (by the
    pipeline's reader, in split order) and tiled to at least ``steps · batch`` volumes."""
    import torch

    from distmis.torch_backend.data import EpochBatches

    reader = EpochBatches(
        info.root, "train", batch, shuffle=False, seed=SEED, cache=False, steps_per_epoch=None
    )
    images, labels = zip(*reader.epoch(0), strict=True)
    images, labels = torch.cat(images), torch.cat(labels)
    reps = math.ceil(steps * batch / len(images))
    return images.repeat(reps, 1, 1, 1, 1), labels.repeat(reps, 1, 1, 1, 1), reps


def _bare_batches(images, labels, batch: int, steps: int, run: int):
    """``steps`` batches gathered from a seeded permutation of the in-memory volumes, as
    Keras' ``fit(shuffle=True)`` gathers from numpy arrays; a new order every run."""
    import torch

    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(SEED + run))
    for step in range(steps):
        index = order[step * batch : (step + 1) * batch]
        yield images[index], labels[index]


# ---------------------------------------------------------------- driver


def _print_machine(cpus: int) -> None:
    import torch

    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except AttributeError:
        capability = "unknown"
    try:
        bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):
        bf16 = "unknown"
    torch_cpu = (
        f"ATen kernels {capability}; oneDNN {torch.backends.mkldnn.is_available()}"
        f" (bf16 supported: {bf16}); parallel backend"
        f" {_parallel_backend(torch.__config__.parallel_info())}"
    )
    print_machine(
        cpus,
        ("numpy", "torch", "ray"),
        hardware=[("cpu", f"{_cpu_model()}; {_cpu_isa()}")],
        runtime=[("torch cpu", torch_cpu)],
    )


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_isa() -> str:
    """The instruction-set flags that decide whether bf16 runs natively (AVX512-BF16, AMX)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next(
                (line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), []
            )
    except OSError:
        return "flags unknown"
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return "flags " + " ".join(f"{f}{'+' if f in flags else '-'}" for f in wanted)


def _parallel_backend(info: str) -> str:
    for line in info.splitlines():
        if line.startswith("ATen parallel backend:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_training_arguments(parser)
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="autocast of (a) and (b): fp32 (off) or bf16 on the CPU (default fp32)",
    )
    parser.add_argument(
        "--channels-last",
        action="store_true",
        help="model and image batches of (a) and (b) in torch.channels_last_3d",
    )
    return check_training_arguments(parser, parser.parse_args(argv), DEPTH)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    cpus, batch, steps = args.cpus, args.batch, args.steps
    _set_threads(cpus)  # first: nothing in this process may have run inter-op work yet
    _print_machine(cpus)

    with training_workdir(args.workdir) as workdir:
        print("\ndata")
        with quiet_stderr():  # TF's C++ start-up lines, in the conversion's worker process
            info = training_dataset(workdir, args.cases, args.source_shape, args.shape, SEED)
        count = info.count("train")
        # A full pass and one batch more, as benchmarks/train.py: first-call set-up and the cache.
        warm_steps = math.ceil(count / batch) + 1

        # Enough volumes for the warm-up epoch as well as for a timed run.
        images, labels, reps = _in_memory(info, batch, max(steps, warm_steps))
        print(
            f"  train split: {count} volumes {tuple(info.image_shape)}, labels"
            f" {tuple(info.label_shape)} {list(info.label_channels)}; in-memory copy tiled"
            f" {reps}x to {tuple(images.shape)}"
            f" ({(images.nbytes + labels.nbytes) / 1e6:.0f} MB)"
        )
        trainer = Trainer(
            int(info.image_shape[-1]), len(info.label_channels), args.precision, args.channels_last
        )
        memory = "channels_last_3d" if args.channels_last else "contiguous (channels first)"
        print(
            f"  model: torch UNet3D depth {DEPTH} base {BASE_FILTERS} {NORM} norm,"
            f" {trainer.parameters()} parameters; Adam lr {LR}; batch {batch}; {steps} timed"
            f" steps; warm-up epoch {warm_steps} steps; precision {args.precision}"
            f" (autocast {'on' if trainer.autocast['enabled'] else 'off'}); memory {memory}"
        )

        import ray

        with ray_actor(
            RayTrainer,
            cpus,
            args.worker_niceness,
            str(info.root),
            cpus,
            batch,
            steps,
            warm_steps,
            args.precision,
            args.channels_last,
        ) as (actor, worker_report):
            print("processes")
            print_process("(a) bare", _process_report())
            print_process("(b) ray actor", worker_report)
            same = worker_report["weights_checksum"] == trainer.weights_checksum
            print(
                f"  initial weights: checksum (sum |w|) {trainer.weights_checksum:.6f} bare,"
                f" {worker_report['weights_checksum']:.6f} ray:"
                f" {'identical' if same else 'DIFFER'}"
            )

            print(f"\nwarm-up (not timed; load average {loadavg()})")
            start = time.perf_counter()
            trainer.run(_bare_batches(images, labels, batch, warm_steps, run=0))
            print(f"  (a) bare: {time.perf_counter() - start:.1f} s")
            print(f"  (b) ray:  {ray.get(actor.warm_up.remote()):.1f} s")

            print(
                f"\nruns: {steps} training steps, (a) and (b) alternating, order swapped every"
                " repeat (a b, b a, ...); loss: the mean training loss of the run's steps"
            )
            best, runs = alternate_runs(
                args.repeats,
                {
                    "bare": lambda repeat: trainer.run(
                        _bare_batches(images, labels, batch, steps, run=1 + repeat)
                    ),
                    "ray": lambda repeat: ray.get(actor.timed_run.remote()),
                },
            )

            print("\npipeline alone (cache=True; timed after one full untimed pass)")
            best["pipeline"] = _time_pipeline(
                _pipeline(str(info.root), batch, steps), warm_steps, args.repeats, first_epoch=0
            )
            best["pipeline_ray"] = ray.get(actor.time_pipeline.remote(args.repeats))

        print(
            f"\nresults: {tuple(info.image_shape)} volumes, batch {batch}, {cpus} cpus"
            f" (intra_op {cpus}, inter_op {max(1, min(2, cpus))}), precision {args.precision},"
            f" {'channels_last_3d' if args.channels_last else 'contiguous'},"
            f" best of {args.repeats}"
        )
        print_table(
            (
                ("(a) bare torch steps, tensors in memory", best["bare"]),
                ("(b) steps in 1 Ray actor, EpochBatches", best["ray"]),
                ("(c) pipeline alone, cached, no model", best["pipeline"]),
                ("    (c in the Ray actor, reference)", best["pipeline_ray"]),
            ),
            cpus,
            "torch",
        )
        print_ratios(best, runs, "steps")
        print(
            "  TensorFlow on the same data: python benchmarks/train.py --workdir DIR"
            f" --batch {batch} --steps {steps} --cpus {cpus} (its (a) row against this one)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
