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
    from distmis.prepare.convert import ConvertParams, convert_dataset
    from distmis.prepare.synthetic import synthesize_dataset

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


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity), else all the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_isa() -> str:
    """The instruction-set flags that decide which kernels run (AVX-512, native bf16, AMX)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next(
                (line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), []
            )
    except OSError:
        return "flags unknown"
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return "flags " + " ".join(f"{f}{'+' if f in flags else '-'}" for f in wanted)


def _meminfo_kib(field: str) -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def memory_gib() -> str:
    """The machine's memory and what is available now."""
    total, available = _meminfo_kib("MemTotal"), _meminfo_kib("MemAvailable")
    if not total:
        return "unknown"
    return f"{total / 2**20:.1f} GiB ({available / 2**20:.1f} GiB available)"


def print_machine(
    given: object, dists: Sequence[str], runtime: Sequence[tuple[str, str]] = ()
) -> None:
    """The machine, a labelled line each: cores (all, usable, ``given`` to the measured
    processes), platform, CPU, memory, Python, the versions of ``dists``, ``runtime``, load
    average. Every benchmark prints it before its numbers."""
    lines = [
        ("cpus", f"{os.cpu_count()} (usable by this process: {usable_cpus()}; given: {given})"),
        ("platform", f"{platform.platform()} ({platform.processor() or platform.machine()})"),
        ("cpu", f"{cpu_model()}; {cpu_isa()}"),
        ("memory", memory_gib()),
        ("python", f"{sys.version.split()[0]} ({platform.python_implementation()})"),
        *((dist, version(dist)) for dist in dists),
        *runtime,
    ]
    print("machine")
    for label, value in lines:
        print(f"  {label:<11} {value}")
    print(f"  {'load avg':<11} {loadavg()} (1, 5, 15 min)")
