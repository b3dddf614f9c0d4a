"""Benchmark NIfTI → TFRecord conversion against the NIfTI load floor.

Synthesises ``--cases`` BraTS-sized cases (240×240×155, four channels) and measures, with 1
and 2 worker processes:

* the LOAD FLOOR: ``msd.load_case`` on every case, which is what the converter must do
  anyway (gzip decompression plus validation), each process loading an equal share;
* full CONVERSION: ``plan_conversion`` (outside the timer) then ``convert_shard``, one shard
  per process, all cases in the train split.

Worker processes are started (``spawn``), import TensorFlow and convert one tiny case before
the timer starts, so process start-up and imports are not timed. Every source file is read
once beforehand so both modes read from the page cache. Prints a table and the ratios the
converter is held to: conversion ≤ 1.3× the load floor per case, and ≥ 0.9·P× throughput
with P processes. A benchmark, not a test: it always exits 0 unless something breaks.

    python benchmarks/convert.py [--cases 6] [--repeats 2] [--workdir DIR] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import importlib.metadata
import io
import json
import multiprocessing
import os
import platform
import pstats
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # inherited by the spawned workers

from distmis.data import msd  # noqa: E402
from distmis.data.convert import ConvertParams, convert_shard, plan_conversion  # noqa: E402
from distmis.data.synthetic import TASK_NAME, synthesize_dataset  # noqa: E402

SEED = 0
WARMUP_SHAPE = (32, 32, 32)
TARGET_CONVERT_OVER_LOAD = 1.3
TARGET_EFFICIENCY = 0.9  # P processes must give at least 0.9·P times one process's throughput

_barrier = None  # set in each worker by _init_worker


@contextlib.contextmanager
def _quiet_stderr():
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


def _warm_up(warm_plan: dict, out: Path) -> None:
    """Import TensorFlow and convert one tiny case (imports, lazy .so loads, first-call setup)."""
    with _quiet_stderr():
        import tensorflow  # noqa: F401

        convert_shard(warm_plan, "train", 0, out)
    out.unlink()


# ---------------------------------------------------------------- worker side (picklable)


def _init_worker(barrier, warm_plan: dict, warm_dir: str) -> None:
    """Import TensorFlow and convert one tiny case, so nothing timed pays for start-up."""
    global _barrier
    _barrier = barrier
    _warm_up(warm_plan, Path(warm_dir) / f"warm-{os.getpid()}.tfrecord")


def _ready() -> int:
    """Block until every worker of the pool is up and warm; return this worker's pid."""
    _barrier.wait(timeout=600)
    return os.getpid()


def _load_share(cases: Sequence[msd.CaseFiles]) -> int:
    for case in cases:
        msd.load_case(case)
    return len(cases)


def _convert_one_shard(plan: dict, index: int, out_path: str) -> int:
    return convert_shard(plan, "train", index, Path(out_path))["records"]


# ---------------------------------------------------------------- driver


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _memory_gib() -> str:
    try:
        with open("/proc/meminfo") as fh:
            kib = int(fh.readline().split()[1])
        return f"{kib / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        return "unknown"


def _print_machine() -> None:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    print("machine")
    print(f"  cpus        {os.cpu_count()} (usable by this process: {usable})")
    print(f"  memory      {_memory_gib()}")
    print(f"  platform    {platform.platform()} ({platform.processor() or platform.machine()})")
    print(f"  python      {sys.version.split()[0]} ({platform.python_implementation()})")
    for dist in ("numpy", "tensorflow", "nibabel", "protobuf"):
        print(f"  {dist:<11} {_version(dist)}")


def _dataset(root: Path, cases: int, shape: tuple[int, int, int], workers: int) -> Path:
    """The synthetic task under ``root``, reused when its source.json matches."""
    task = root / TASK_NAME
    source = task / "source.json"
    if source.is_file():
        meta = json.loads(source.read_text())
        if (
            meta.get("kind") == "synthetic"
            and meta.get("cases") == cases
            and tuple(meta.get("shape", ())) == shape
            and meta.get("seed") == SEED
        ):
            print(f"  reusing {cases} synthetic cases {shape} in {task}")
            return task
    started = time.perf_counter()
    task = synthesize_dataset(root, cases, shape, SEED, progress=False, workers=workers)
    print(f"  synthesised {cases} cases {shape} in {time.perf_counter() - started:.1f} s -> {task}")
    return task


def _warm_page_cache(task: Path) -> tuple[int, int]:
    files = [p for p in sorted(task.rglob("*")) if p.is_file()]
    total = 0
    for path in files:
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 23):
                total += len(chunk)
    return len(files), total


def _params(out_shape: tuple[int, int, int], shards: int) -> ConvertParams:
    return ConvertParams(
        shape=out_shape, label_mode="binary", split=(1.0, 0.0, 0.0), shards=(shards, 1, 1)
    )


def _timed(pool: ProcessPoolExecutor, fn: Callable, jobs: list[tuple]) -> tuple[float, int]:
    """Run ``fn(*job)`` for every job at once; seconds around the parallel section only."""
    started = time.perf_counter()
    futures = [pool.submit(fn, *job) for job in jobs]
    done = sum(f.result() for f in futures)
    return time.perf_counter() - started, done


def _bench_processes(
    processes: int,
    task: Path,
    out_shape: tuple[int, int, int],
    repeats: int,
    warm_plan: dict,
    workdir: Path,
) -> dict[str, float]:
    """Best-of-``repeats`` seconds for load and conversion with ``processes`` warm workers."""
    plan = plan_conversion(task, _params(out_shape, processes))
    entries = plan["shards"]["train"]
    # The load floor loads exactly the cases each conversion worker gets.
    load_jobs = [
        ([msd.CaseFiles(c["case_id"], Path(c["image"]), Path(c["label"])) for c in e["cases"]],)
        for e in entries
    ]
    out_dir = workdir / f"out-{processes}p"
    convert_jobs = [(plan, i, str(out_dir / e["file"])) for i, e in enumerate(entries)]

    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    best = {"load": float("inf"), "convert": float("inf")}
    started = time.perf_counter()
    with ProcessPoolExecutor(
        processes,
        mp_context=context,
        initializer=_init_worker,
        initargs=(barrier, warm_plan, str(workdir / "warmup-out")),
    ) as pool:
        pids = [f.result() for f in [pool.submit(_ready) for _ in range(processes)]]
        if len(set(pids)) != processes:
            raise RuntimeError(f"expected {processes} distinct warm workers, got pids {pids}")
        print(
            f"  {processes} worker(s) started and warmed in {time.perf_counter() - started:.1f} s"
            " (not timed)"
        )
        for repeat in range(repeats):
            # Interleave the modes so drift (thermal, page cache, writeback) hits both alike.
            seconds, count = _timed(pool, _load_share, load_jobs)
            best["load"] = min(best["load"], seconds)
            print(f"    repeat {repeat + 1}: load    {count} cases {seconds:7.2f} s")
            out_dir.mkdir(parents=True, exist_ok=True)
            seconds, count = _timed(pool, _convert_one_shard, convert_jobs)
            best["convert"] = min(best["convert"], seconds)
            print(f"    repeat {repeat + 1}: convert {count} cases {seconds:7.2f} s")
            shutil.rmtree(out_dir)
    return best


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _profile(task: Path, out_shape: tuple[int, int, int], warm_plan: dict, workdir: Path) -> None:
    """cProfile one case: load only, then a one-case conversion, in this process."""
    _warm_up(warm_plan, workdir / "warmup-out" / "warm-profile.tfrecord")

    plan = plan_conversion(task, _params(out_shape, 1))
    plan["shards"]["train"][0]["cases"] = plan["shards"]["train"][0]["cases"][:1]
    first = plan["shards"]["train"][0]["cases"][0]
    case = msd.CaseFiles(first["case_id"], Path(first["image"]), Path(first["label"]))
    out = workdir / "profile-out" / plan["shards"]["train"][0]["file"]

    for title, call in (
        (f"load_case({case.case_id})", lambda: msd.load_case(case)),
        (
            f"convert_shard of one case ({case.case_id})",
            lambda: convert_shard(plan, "train", 0, out),
        ),
    ):
        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.enable()
        call()
        profiler.disable()
        seconds = time.perf_counter() - started
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(15)
        print(f"\nprofile: {title}: {seconds:.2f} s wall (under cProfile), top 15 by cumulative")
        lines = text.getvalue().splitlines()
        start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
        print("\n".join(line for line in lines[start:] if line.strip()))
    shutil.rmtree(out.parent, ignore_errors=True)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=6, help="cases to synthesise (default 6)")
    parser.add_argument(
        "--shape", type=int, nargs=3, default=(240, 240, 155), metavar=("X", "Y", "Z")
    )
    parser.add_argument(
        "--out-shape", type=int, nargs=3, default=(240, 240, 152), metavar=("X", "Y", "Z")
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="keep the synthetic data here and reuse it on later runs (default: a temp dir)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="best of R runs (default 2)")
    parser.add_argument(
        "--processes",
        type=int,
        nargs="+",
        default=(1, 2),
        help="process counts to measure; 1 is always included (default 1 2)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also cProfile loading and converting one case in this process",
    )
    args = parser.parse_args(argv)
    args.shape, args.out_shape = tuple(args.shape), tuple(args.out_shape)
    args.processes = sorted({1, *args.processes})
    if args.repeats < 1 or min(args.processes) < 1:
        parser.error("--repeats and --processes must be >= 1")
    if args.cases < max(args.processes):
        parser.error(f"--cases must be >= the largest process count ({max(args.processes)})")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    _print_machine()

    own_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="distmis-bench-")) if own_workdir else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        print("\ndata")
        task = _dataset(workdir / "msd", args.cases, args.shape, os.cpu_count() or 1)
        warm_task = _dataset(workdir / "msd-warmup", 1, WARMUP_SHAPE, 1)
        warm_plan = plan_conversion(warm_task, _params(WARMUP_SHAPE, 1))
        files, size = _warm_page_cache(task)
        print(
            f"  page cache: read all {files} files of the task ({size / 1e6:.0f} MB) once before"
            " timing, so both modes read them from memory"
        )
        print(
            "  timing: perf_counter around the parallel section only; worker start-up, imports"
            " (TensorFlow) and one tiny warm-up conversion per worker happen before it;"
            f" best of {args.repeats}"
        )

        print("\nruns")
        results = {
            p: _bench_processes(p, task, args.out_shape, args.repeats, warm_plan, workdir)
            for p in args.processes
        }

        cases = args.cases
        print(f"\nresults: {cases} cases {args.shape} -> {args.out_shape}, binary labels")
        print(f"  {'mode':<8}{'procs':>6}{'cases':>7}{'seconds':>10}{'cases/s':>10}{'s/case':>9}")
        for p, best in results.items():
            for mode in ("load", "convert"):
                sec = best[mode]
                print(
                    f"  {mode:<8}{p:>6}{cases:>7}{sec:>10.2f}{cases / sec:>10.3f}{sec / cases:>9.3f}"
                )

        print("\nratios")
        for p, best in results.items():
            ratio = best["convert"] / best["load"]
            print(
                f"  conversion / load time per case, {p} proc: {ratio:5.2f}"
                f"  (target <= {TARGET_CONVERT_OVER_LOAD})"
                f"  {_verdict(ratio <= TARGET_CONVERT_OVER_LOAD)}"
            )
        for p in args.processes[1:]:
            target = TARGET_EFFICIENCY * p
            for mode in ("convert", "load"):
                speedup = results[1][mode] / results[p][mode]
                print(
                    f"  {mode:<7} throughput {p} proc / 1 proc: {speedup:5.2f}"
                    f"  (target >= {target:.2f})  {_verdict(speedup >= target)}"
                )
        if any(cases % p for p in args.processes):
            print("  note: cases do not divide evenly among the processes; shares are unequal")

        if args.profile:
            _profile(task, args.out_shape, warm_plan, workdir)
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
