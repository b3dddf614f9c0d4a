"""Helpers every benchmark script shares: quiet TensorFlow start-up, versions, load, verdicts.

The two training benchmarks share more in :mod:`_training`. Imports only the standard library
(:func:`paper_size_shards` imports the project's converter when called).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import sys
from collections.abc import Iterator, Sequence
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


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def loadavg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def paper_size_shards(
    workdir: Path,
    cases: int,
    dtypes: Sequence[str],
    source_shape: tuple[int, int, int],
    stored_shape: tuple[int, int, int],
    workers: int = 2,
) -> dict[str, Path]:
    """``cases`` synthetic cases of ``source_shape`` converted by the project's converter
    (resampled to ``stored_shape``, 75 % train / 25 % val, up to 4 train shards) once per
    image dtype: ``{dtype: tfrecord folder}``. Reuses what an earlier run left in ``workdir``.
    """
    from distmis.data.convert import ConvertParams, convert_dataset
    from distmis.data.synthetic import synthesize_dataset

    task = workdir / "raw" / "Task01_BrainTumour"
    if not task.is_dir():
        print(f"synthesising {cases} cases of {source_shape} ...", flush=True)
        synthesize_dataset(workdir / "raw", cases, source_shape, 0, progress=False, workers=workers)
    out = {}
    for dtype in dtypes:
        target = workdir / f"tfrecords-{dtype}"
        if not (target / "info.json").is_file():
            print(f"converting to {stored_shape} {dtype} ...", flush=True)
            shards = (min(4, round(cases * 0.75)), 1, 1)
            params = ConvertParams(
                shape=stored_shape, split=(0.75, 0.25, 0.0), shards=shards, image_dtype=dtype
            )
            convert_dataset(task, target, params, workers=workers, progress=False)
        out[dtype] = target
    return out
