"""Time one training step of the PyTorch 3D U-Net on one GPU: fp32, TF32 and bf16 autocast.

A step is forward + soft Dice loss + backward + Adam step of
:func:`distmis.torch_backend.unet.build_unet_torch` (depth 3, base 8, batch norm unless told)
on random tensors already on the device: no data loading, no host transfer. Default input is
the paper's BraTS volume, 4 × 240 × 240 × 152 (C × X × Y × Z), batch 2, one output channel.

Modes (``--modes``, comma-separated):

- ``fp32``: float32 with TF32 off (``torch.backends.cuda.matmul.allow_tf32`` and
  ``torch.backends.cudnn.allow_tf32`` False): true fp32 convolutions;
- ``tf32``: float32 tensors, TF32 tensor-core convolutions and matmuls allowed;
- ``bf16``: ``torch.autocast(dtype=torch.bfloat16)`` around the forward (weights, gradients
  and Adam state stay float32; the Dice sums run in float32), TF32 allowed for what autocast
  leaves in float32.

``--channels-last-3d`` puts the model and input in ``torch.channels_last_3d`` memory format.
``torch.backends.cudnn.benchmark`` is on, so the warm-up steps also pick the convolution
algorithms. Each mode gets a fresh model (same seed) and optimizer; ``--warmup`` untimed steps,
then ``--steps`` timed with CUDA events around the whole run, then one synchronise. Peak memory
is ``torch.cuda.max_memory_allocated`` with the counter reset per mode. On a machine without
CUDA (``--device cpu``) it runs the same steps timed with ``perf_counter`` as a smoke check;
the modes then differ only by autocast, and CPU numbers say nothing about GPUs.

Imports only torch, numpy and :mod:`distmis.torch_backend` (no TensorFlow, no Ray), so it runs
where only PyTorch is installed::

    python benchmarks/gpu_unet.py [--shape 240 240 152] [--channels 4] [--batch 2]
                                  [--steps 20] [--warmup 5] [--modes fp32,tf32,bf16]
                                  [--channels-last-3d] [--norm batch] [--device cuda]
                                  [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from distmis.torch_backend.losses import soft_dice_loss
from distmis.torch_backend.unet import build_unet_torch, count_parameters

MODES = ("fp32", "tf32", "bf16")
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
    """Build a fresh model and time ``args.steps`` training steps in ``mode``."""
    set_tf32(mode != "fp32")
    memory_format = torch.channels_last_3d if args.channels_last_3d else torch.contiguous_format
    model = build_unet_torch(
        args.channels, args.out_channels, args.depth, args.base_filters, args.norm, seed=0
    )
    model = model.to(device=device, memory_format=memory_format).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    generator = torch.Generator(device=device).manual_seed(0)
    image = torch.randn(
        args.batch, args.channels, *args.shape, device=device, generator=generator
    ).contiguous(memory_format=memory_format)
    label = (
        torch.rand(args.batch, args.out_channels, *args.shape, device=device, generator=generator)
        > 0.9
    ).float()
    bf16 = mode == "bf16"

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            prediction = model(image)
        loss = soft_dice_loss(label, prediction)  # float32 sums whatever the prediction dtype
        loss.backward()
        optimizer.step()
        return loss.detach()

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup):
        first_loss = step()
    if cuda:
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(args.steps):
            loss = step()
        end.record()
        torch.cuda.synchronize(device)
        seconds = start.elapsed_time(end) / 1000.0
        peak = torch.cuda.max_memory_allocated(device)
    else:
        started = time.perf_counter()
        for _ in range(args.steps):
            loss = step()
        seconds = time.perf_counter() - started
        peak = None
    last_loss = float(loss)
    result = {
        "mode": mode,
        "ms_per_step": 1000.0 * seconds / args.steps,
        "volumes_per_s": args.batch * args.steps / seconds,
        "peak_memory_gib": None if peak is None else peak / 2**30,
        "loss_after_warmup": float(first_loss) if args.warmup else None,
        "loss_last": last_loss,
        "parameters": count_parameters(model),
    }
    if not math.isfinite(last_loss):
        result["error"] = f"loss is {last_loss}"
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
        f"warm-up {args.warmup}, timed {args.steps} steps, Adam lr {args.lr}"
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
            f"{'n/a' if peak is None else f'{peak:.2f}':>9} {result['loss_last']:>8.4f}"
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
