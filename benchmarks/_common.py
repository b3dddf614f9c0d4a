"""Helpers the benchmark scripts share: quiet TensorFlow start-up, versions, load, verdicts,
the synthetic training data set."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null: TensorFlow's C++ start-up chatter ignores
    TF_CPP_MIN_LOG_LEVEL. Python exceptions still propagate (and print) after it."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def loadavg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


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
    """--cases, --shape, --source-shape, --batch, --steps, --repeats, --cpus, --workdir."""
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
        try:
            args.cpus = len(os.sched_getaffinity(0))
        except AttributeError:
            args.cpus = os.cpu_count() or 1
    if min(args.cases, args.batch, args.steps, args.repeats, args.cpus) < 1:
        parser.error("--cases, --batch, --steps, --repeats and --cpus must be >= 1")
    if any(s % 2**depth for s in args.shape):
        parser.error(f"every --shape axis must be divisible by {2**depth} (U-Net depth {depth})")
    return args
