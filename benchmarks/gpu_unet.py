"""Time one training step of the PyTorch 3D U-Net on one GPU: fp32, TF32 and bf16 autocast.

A step is the training loop's own: the model, optimiser and
:class:`distmis.backends.torch.loop.TrainingStep` a torch trial builds (``build_unet_torch``,
depth 3, base 8, batch norm unless told; the loop's ``adam``, Keras' β₁ 0.9, ε 1e-7;
``memory_format``), run as a trial's ``train_epoch`` runs it (forward under autocast, soft Dice
in float32, backward, Adam, Dice; the loss and Dice read on the host every step), all through
``distmis.backends.torch.loop``, on random tensors already on the device: no data loading, no
host transfer. Default input is the paper's BraTS volume, 4 × 240 × 240 × 152
(C × X × Y × Z), batch 2, one output channel.

Modes (``--modes``, comma-separated):

- ``fp32``: float32 with TF32 off (``torch.backends.cuda.matmul.allow_tf32`` and
  ``torch.backends.cudnn.allow_tf32`` False): true fp32 convolutions;
- ``tf32``: float32 tensors, TF32 tensor-core convolutions and matmuls allowed;
- ``bf16``: the step's ``precision="bf16"``, ``torch.autocast(dtype=torch.bfloat16)`` around
  the forward (weights, gradients and Adam state stay float32; the Dice sums run in float32),
  TF32 allowed for what autocast leaves in float32.

``--channels-last-3d`` is the step's ``channels_last_3d``: model and input in
``torch.channels_last_3d`` memory format.
``torch.backends.cudnn.benchmark`` is on, so the warm-up steps also pick the convolution
algorithms. Each mode gets a fresh model (same seed) and optimizer; ``--warmup`` untimed steps,
then ``--steps`` timed with CUDA events around the whole run, then one synchronise. Peak memory
is ``torch.cuda.max_memory_allocated`` with the counter reset per mode. On a machine without
CUDA (``--device cpu``) it runs the same steps timed with ``perf_counter`` as a smoke check;
the modes then differ only by autocast, and CPU numbers say nothing about GPUs.

The loss column is the mean training loss of the timed steps. Imports only torch, numpy and
:mod:`distmis.backends.torch` (no TensorFlow, no Ray), so it runs where only PyTorch is
installed::

    python benchmarks/gpu_unet.py [--shape 240 240 152] [--channels 4] [--batch 2]
                                  [--steps 20] [--warmup 5] [--modes fp32,tf32,bf16]
                                  [--channels-last-3d] [--norm batch] [--device cuda]
                                  [--json results.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from distmis.backends.torch.loop import (
    ADAM_BETA_1,
    ADAM_EPSILON,
    build_training_step,
    train_batches,
)
from distmis.backends.torch.unet import count_parameters
from distmis.hparams import HParams

MODES = ("fp32", "tf32", "bf16")
# What each mode asks of the training step (TF32 is a global switch, set per mode).
PRECISION = {"fp32": "fp32", "tf32": "fp32", "bf16": "bf16"}
SEED = 0
# NVIDIA DeepLearningExamples, PyTorch UNet3D (nnU-Net based, BraTS), training throughput at
# 128³ on one A100 80GB, batch 2: a different (larger) network and volume; for orientation only.
PUBLISHED_ANCHORS = (
    ("NVIDIA UNet3D 128³, 1×A100, batch 2, TF32", 10.4),
    ("NVIDIA UNet3D 128³, 1×A100, batch 2, AMP", 17.9),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shape", type=int, nargs=3, default=(240, 240, 152), metavar=("X", "Y", "Z")
    )
    parser.add_argument("--channels", type=int, default=4, help="input channels C")
    parser.add_argument("--out-channels", type=int, default=1, help="label channels K")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per mode")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated of {MODES}")
    parser.add_argument("--channels-last-3d", action="store_true")
    parser.add_argument("--norm", choices=("batch", "group"), default="batch")
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--base-filters", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in args.modes if m not in MODES]
    if unknown or not args.modes:
        parser.error(f"--modes must name some of {MODES}, got {args.modes}")
    if min(args.batch, args.steps, args.channels, args.out_channels) < 1 or args.warmup < 0:
        parser.error("--batch, --steps, --channels, --out-channels must be >= 1, --warmup >= 0")
    return args


def configuration(args: argparse.Namespace) -> HParams:
    """The configuration trained: ``--lr`` and ``--norm``, the others the grid's defaults."""
    return HParams(lr=args.lr, norm=args.norm)


def set_tf32(allowed: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = allowed
    torch.backends.cudnn.allow_tf32 = allowed


def environment(device: torch.device) -> dict:
    info = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "numpy": np.__version__,
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["compute_capability"] = f"{props.major}.{props.minor}"
    return info


def run_mode(mode: str, args: argparse.Namespace, device: torch.device) -> dict:
    """Build a fresh model and step and time ``args.steps`` training steps in ``mode``."""
    set_tf32(mode != "fp32")
    architecture = dict(
        in_channels=args.channels,
        out_channels=args.out_channels,
        depth=args.depth,
        base_filters=args.base_filters,
        **configuration(args).model_kwargs(),
    )
    step = build_training_step(
        architecture,
        device,
        seed=SEED,
        **configuration(args).optimizer_kwargs(),
        precision=PRECISION[mode],
        channels_last_3d=args.channels_last_3d,
    )
    generator = torch.Generator(device=device).manual_seed(SEED)
    image = torch.randn(args.batch, args.channels, *args.shape, device=device, generator=generator)
    label = (
        torch.rand(args.batch, args.out_channels, *args.shape, device=device, generator=generator)
        > 0.9
    ).float()
    # In the step's memory format once, so its to_device is a no-op in the timed steps.
    batch = step.to_device((image, label))

    def run(steps: int) -> float:
        """``steps`` steps on the one batch; their mean loss (nan for none)."""
        sums = train_batches(step, itertools.repeat(batch, steps), args.out_channels)
        return sums.loss / sums.count if sums.count else math.nan

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    warmup_loss = run(args.warmup)
    if cuda:
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        loss = run(args.steps)
        end.record()
        torch.cuda.synchronize(device)
        seconds = start.elapsed_time(end) / 1000.0
        peak = torch.cuda.max_memory_allocated(device)
    else:
        started = time.perf_counter()
        loss = run(args.steps)
        seconds = time.perf_counter() - started
        peak = None
    result = {
        "mode": mode,
        "ms_per_step": 1000.0 * seconds / args.steps,
        "volumes_per_s": args.batch * args.steps / seconds,
        "peak_memory_gib": None if peak is None else peak / 2**30,
        "loss_warmup_mean": warmup_loss if args.warmup else None,
        "loss_mean": loss,
        "parameters": count_parameters(step.network),
        "adam": {k: step.optimizer.defaults[k] for k in ("lr", "betas", "eps", "amsgrad")},
    }
    if not math.isfinite(loss):
        result["error"] = f"loss is {loss}"
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False; use --device cpu")
    torch.backends.cudnn.benchmark = True
    env = environment(device)
    print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    print(
        f"input (B, C, X, Y, Z) = ({args.batch}, {args.channels}, {', '.join(map(str, args.shape))})"
        f", K={args.out_channels}, depth {args.depth}, base {args.base_filters}, {args.norm} norm, "
        f"{'channels_last_3d' if args.channels_last_3d else 'contiguous (NCDHW)'}, "
        f"warm-up {args.warmup}, timed {args.steps} steps, the loop's TrainingStep with"
        f" Adam lr {args.lr} betas ({ADAM_BETA_1}, {configuration(args).beta_2}) eps {ADAM_EPSILON:g}"
    )
    if device.type != "cuda":
        print("note: CPU smoke run; fp32 and tf32 are the same computation here")
    results = []
    header = f"{'mode':<6} {'ms/step':>10} {'volumes/s':>10} {'peak GiB':>9} {'loss':>8}"
    print(header)
    for mode in args.modes:
        try:
            result = run_mode(mode, args, device)
        except torch.cuda.OutOfMemoryError as exc:
            result = {"mode": mode, "error": f"out of memory: {str(exc).splitlines()[0]}"}
            torch.cuda.empty_cache()
        results.append(result)
        if "ms_per_step" not in result:
            print(f"{mode:<6} {result['error']}")
            continue
        peak = result["peak_memory_gib"]
        print(
            f"{mode:<6} {result['ms_per_step']:>10.1f} {result['volumes_per_s']:>10.2f} "
            f"{'n/a' if peak is None else f'{peak:.2f}':>9} {result['loss_mean']:>8.4f}"
            + (f"  ({result['error']})" if "error" in result else "")
        )
    print("published anchors (volumes/s; different network and volume, for orientation only):")
    for name, value in PUBLISHED_ANCHORS:
        print(f"  {name}: {value}")
    if args.json:
        payload = {
            "environment": env,
            "args": {**vars(args), "json": str(args.json)},
            "results": results,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
