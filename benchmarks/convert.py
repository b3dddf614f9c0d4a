"""Benchmark NIfTI → TFRecord conversion against the I/O floor.

Synthesises ``--cases`` BraTS-sized cases (240×240×155, four channels) and measures, with 1
and 2 worker processes:

* the LOAD FLOOR: ``msd.load_case`` on every case, which is what the converter must do
  anyway (gzip decompression plus validation), each process loading an equal share;
* the WRITE FLOOR: a plain unbuffered ``write()`` of as many bytes as each case's record
  takes (image + label + framing) into a file on the same disk as the shards, from one
  buffer filled beforehand (so no page faults of its own);
* full CONVERSION: ``plan_conversion`` (outside the timer) then ``convert_shard``, one shard
  per process, all cases in the train split: load, reorient, crop/pad, z-score, encode,
  CRC32C, sha256, write.

The I/O FLOOR is load floor + write floor, both measured in the same run. Worker processes
are started (``spawn``) and convert one tiny case before the timer starts, so process start-up
and imports are not timed. Every source file is read once beforehand so all modes read from
the page cache. Prints a table and the ratios the converter is held to: conversion ≤ 1.25×
the I/O floor per case, and ≥ 0.9·P× throughput with P processes. Beside wall time it reports
the workers' user/sys CPU time and minor page faults (from getrusage), which tell a busy
machine (cpu/wall below the process count) from a slow converter, and memory churn (sys
time) from computation (user time). ``--profile`` adds a cProfile of loading and of
converting one case. A benchmark, not a test: it exits 0 unless something breaks.

    python benchmarks/convert.py [--cases 6] [--repeats 2] [--workdir DIR] [--profile]
                                 [--shape X Y Z] [--out-shape X Y Z] [--processes 1 2]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import multiprocessing
import os
import pstats
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from _common import loadavg, print_machine, verdict  # noqa: E402

from distmis.prepare import msd  # noqa: E402
from distmis.prepare.convert import (  # noqa: E402
    ConvertParams,
    convert_shard,
    plan_conversion,
)
from distmis.prepare.synthetic import TASK_NAME, synthesize_dataset  # noqa: E402
from distmis.shards import heap  # noqa: E402

SEED = 0
WARMUP_SHAPE = (32, 32, 32)
TARGET_CONVERT_OVER_IO = 1.25
TARGET_EFFICIENCY = 0.9  # P processes must give at least 0.9·P times one process's throughput

_barrier = None  # set in each worker by _init_worker


def _warm_up(warm_plan: dict, out: Path) -> None:
    """Convert one tiny case (imports, lazy .so loads, first-call setup)."""
    convert_shard(warm_plan, "train", 0, out)
    out.unlink()


# ---------------------------------------------------------------- worker side (picklable)


def _init_worker(barrier, warm_plan: dict, warm_dir: str) -> None:
    """Convert one tiny case, so nothing timed pays for start-up."""
    global _barrier
    _barrier = barrier
    # Both the floor and the conversion run with the allocator settings the converter's
    # own processes use, so the ratio compares like with like.
    heap.reuse_freed_blocks()
    _warm_up(warm_plan, Path(warm_dir) / f"warm-{os.getpid()}.tfrecord")


def _ready() -> int:
    """Block until every worker of the pool is up and warm; return this worker's pid."""
    _barrier.wait(timeout=600)
    return os.getpid()


@dataclass(frozen=True)
class Usage:
    """Resources one worker (all its threads) spent on a job."""

    cases: int
    user: float
    sys: float
    faults: int  # minor page faults: freshly touched memory, 4 KiB each unless huge pages
    # The worker's peak RSS so far (bytes): what a conversion job's memory request is sized by
    # (distmis.cluster.memory). Peaks are not summed: a job converts one shard in one process.
    peak_rss: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.cases + other.cases,
            self.user + other.user,
            self.sys + other.sys,
            self.faults + other.faults,
            max(self.peak_rss, other.peak_rss),
        )


def _measured(job: Callable[[], int]) -> Usage:
    before = resource.getrusage(resource.RUSAGE_SELF)
    cases = job()
    after = resource.getrusage(resource.RUSAGE_SELF)
    return Usage(
        cases,
        after.ru_utime - before.ru_utime,
        after.ru_stime - before.ru_stime,
        after.ru_minflt - before.ru_minflt,
        after.ru_maxrss * 1024,  # KiB on Linux
    )


def _load_cases(cases: Sequence[msd.CaseFiles]) -> int:
    for case in cases:
        msd.load_case(case)
    return len(cases)


def _load_share(cases: Sequence[msd.CaseFiles]) -> Usage:
    """The load floor for one process: load (decompress and validate) ``cases``."""
    return _measured(lambda: _load_cases(cases))


_write_buffer: bytearray | None = None  # one per worker, reused by every write-floor job


def _write_share(cases: int, record_bytes: int, out_path: str) -> Usage:
    """The write floor for one process: ``cases`` plain writes of ``record_bytes`` each."""
    global _write_buffer
    if _write_buffer is None or len(_write_buffer) != record_bytes:
        _write_buffer = bytearray(b"\x5a" * record_bytes)  # touched now, not while timed
    path = Path(out_path)

    def write() -> int:
        with path.open("wb", buffering=0) as fh:
            for _ in range(cases):
                view = memoryview(_write_buffer)
                while view.nbytes:
                    view = view[fh.write(view) :]
        return cases

    usage = _measured(write)
    path.unlink()
    return usage


def _convert_one_shard(plan: dict, index: int, out_path: str) -> Usage:
    """Convert train shard ``index`` of ``plan`` to ``out_path``."""
    return _measured(lambda: convert_shard(plan, "train", index, Path(out_path))["records"])


# ---------------------------------------------------------------- driver


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


@dataclass(frozen=True)
class Run:
    seconds: float  # wall clock around the parallel section
    usage: Usage  # summed over the workers


def _timed(pool: ProcessPoolExecutor, fn: Callable[..., Usage], jobs: list[tuple]) -> Run:
    """Run ``fn(*job)`` for every job at once; time the parallel section only."""
    started = time.perf_counter()
    futures = [pool.submit(fn, *job) for job in jobs]
    usages = [f.result() for f in futures]
    seconds = time.perf_counter() - started
    total = usages[0]
    for usage in usages[1:]:
        total += usage
    return Run(seconds, total)


def _record_bytes(out_shape: tuple[int, int, int]) -> int:
    """Bytes one record of the benchmark's dataset takes in a shard: float32 image of four
    channels, one uint8 label channel, and the framing and Example headers (~100 bytes)."""
    voxels = out_shape[0] * out_shape[1] * out_shape[2]
    return voxels * (4 * 4 + 1) + 100


def _bench_processes(
    processes: int,
    task: Path,
    out_shape: tuple[int, int, int],
    repeats: int,
    warm_plan: dict,
    workdir: Path,
) -> dict[str, Run]:
    """Best-of-``repeats`` runs of load and conversion with ``processes`` warm workers."""
    plan = plan_conversion(task, _params(out_shape, processes))
    entries = plan["shards"]["train"]
    # The load floor loads exactly the cases each conversion worker gets.
    load_jobs = [
        ([msd.CaseFiles(c["case_id"], Path(c["image"]), Path(c["label"])) for c in e["cases"]],)
        for e in entries
    ]
    out_dir = workdir / f"out-{processes}p"
    convert_jobs = [(plan, i, str(out_dir / e["file"])) for i, e in enumerate(entries)]
    write_jobs = [
        (len(e["cases"]), _record_bytes(out_shape), str(out_dir / f"write-{i}.bin"))
        for i, e in enumerate(entries)
    ]

    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    best: dict[str, Run] = {}
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
            for mode, fn, jobs in (
                ("load", _load_share, load_jobs),
                ("write", _write_share, write_jobs),
                ("convert", _convert_one_shard, convert_jobs),
            ):
                out_dir.mkdir(parents=True, exist_ok=True)
                run = _timed(pool, fn, jobs)
                if mode not in best or run.seconds < best[mode].seconds:
                    best[mode] = run
                u = run.usage
                print(
                    f"    repeat {repeat + 1}: {mode:<7} {u.cases} cases {run.seconds:6.2f} s"
                    f"  (worker user {u.user:5.2f} s, sys {u.sys:5.2f} s;"
                    f" load average {loadavg()})"
                )
                shutil.rmtree(out_dir)
    # The I/O floor: the best load and the best write of this run, one after the other.
    best["io floor"] = Run(
        best["load"].seconds + best["write"].seconds, best["load"].usage + best["write"].usage
    )
    return best


def _profile(task: Path, out_shape: tuple[int, int, int], warm_plan: dict, workdir: Path) -> None:
    """cProfile one case in this process: load only, then a one-case conversion.

    The profiler's clock is this process's CPU time, so other load on the machine does not
    inflate the numbers.
    """
    _warm_up(warm_plan, workdir / "warmup-out" / "warm-profile.tfrecord")

    plan = plan_conversion(task, _params(out_shape, 1))
    entry = plan["shards"]["train"][0]
    entry["cases"] = entry["cases"][:1]
    case = msd.CaseFiles(
        entry["cases"][0]["case_id"],
        Path(entry["cases"][0]["image"]),
        Path(entry["cases"][0]["label"]),
    )
    out = workdir / "profile-out" / entry["file"]

    def load() -> int:
        msd.load_case(case)
        return 1

    def convert() -> int:
        return convert_shard(plan, "train", 0, out)["records"]

    for title, job in (
        (f"load_case({case.case_id})", load),
        (f"convert_shard of one case ({case.case_id})", convert),
    ):
        profiler = cProfile.Profile(time.process_time)
        started = time.perf_counter()
        profiler.enable()
        usage = _measured(job)
        profiler.disable()
        seconds = time.perf_counter() - started
        print(
            f"\nprofile: {title}: {seconds:.2f} s wall, user {usage.user:.2f} s, sys"
            f" {usage.sys:.2f} s, {usage.faults / 1000:.0f}k minor page faults"
            " (under cProfile; its clock is CPU time)"
        )
        for key, count in (("cumulative", 15), ("tottime", 10)):
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).strip_dirs().sort_stats(key).print_stats(count)
            lines = text.getvalue().splitlines()
            start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
            print(f"  top {count} by {key}:")
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
    print_machine("1 per worker process", ("numpy", "nibabel", "crc32c", "SimpleITK"))

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
            " timing, so every mode reads them from memory"
        )
        print(
            "  timing: perf_counter around the parallel section only; worker start-up, imports"
            " and one tiny warm-up conversion per worker happen before it;"
            f" best of {args.repeats}"
        )

        print(f"\nruns (load average before: {loadavg()})")
        if os.getloadavg()[0] > 0.5:
            print(
                "  WARNING: other processes are using the CPUs; wall times and scaling will"
                " suffer (compare the cpu/wall column with the process count)"
            )
        results = {
            p: _bench_processes(p, task, args.out_shape, args.repeats, warm_plan, workdir)
            for p in args.processes
        }

        cases = args.cases
        print(f"\nresults: {cases} cases {args.shape} -> {args.out_shape}, binary labels")
        print(
            f"  {'mode':<8}{'procs':>6}{'cases':>7}{'seconds':>9}{'cases/s':>9}{'s/case':>8}"
            f"{'cpu/wall':>10}{'user/case':>11}{'sys/case':>10}{'kfaults/case':>14}"
            f"{'peak RSS':>10}"
        )
        for p, best in results.items():
            for mode in ("load", "write", "io floor", "convert"):
                sec, u = best[mode].seconds, best[mode].usage
                print(
                    f"  {mode:<8}{p:>6}{cases:>7}{sec:>9.2f}{cases / sec:>9.3f}{sec / cases:>8.3f}"
                    f"{(u.user + u.sys) / sec:>10.2f}{u.user / cases:>11.3f}{u.sys / cases:>10.3f}"
                    f"{u.faults / 1000 / cases:>14.0f}{u.peak_rss / 1e9:>8.2f} GB"
                )
        print(
            "  cpu/wall: worker CPU seconds (user + sys, all threads) / wall seconds; about equal"
            " to procs when the workers are CPU-bound and have the cores to themselves."
            " kfaults: thousands of minor page faults, i.e. fresh memory the kernel had to map"
            " and zero (4 KiB each, or 2 MiB where transparent huge pages apply)."
            " peak RSS: the largest worker's, imports included (a conversion job's memory)."
        )

        print("\nratios")
        for p, best in results.items():
            ratio = best["convert"].seconds / best["io floor"].seconds
            print(
                f"  conversion / I/O floor (load + write) per case, {p} proc: {ratio:5.2f}"
                f"  (target <= {TARGET_CONVERT_OVER_IO})"
                f"  {verdict(ratio <= TARGET_CONVERT_OVER_IO)}"
            )
            print(
                f"    for reference: conversion / load floor alone: "
                f"{best['convert'].seconds / best['load'].seconds:5.2f}"
            )
        for p in args.processes[1:]:
            target = TARGET_EFFICIENCY * p
            for mode in ("convert", "io floor"):
                speedup = results[1][mode].seconds / results[p][mode].seconds
                print(
                    f"  {mode:<7} throughput {p} proc / 1 proc: {speedup:5.2f}"
                    f"  (target >= {target:.2f})  {verdict(speedup >= target)}"
                )
        one = results[1]
        cpu_ratio = (one["convert"].usage.user + one["convert"].usage.sys) / (
            one["load"].usage.user + one["load"].usage.sys
        )
        print(
            f"  (for reference, not a target: conversion / load CPU seconds per case, 1 proc:"
            f" {cpu_ratio:.2f}; CPU time is less disturbed by other load on the machine)"
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
