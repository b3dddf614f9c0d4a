"""Benchmark the training input pipelines at the paper's size: rate per core and memory.

Synthesises ``--cases`` BraTS-size cases (240×240×155, four channels), converts them with the
project's converter to 240×240×152 shards (float32 and float16, binary labels), then runs
each backend's real training pipeline — ``make_dataset`` (tf.data) and ``EpochBatches``
(torch), with the schema's defaults (``train.shuffle_buffer``) — ALONE, without a model, in a
fresh process pinned to ``--cores`` cores:

* STREAMING (``cache: false``): records read, CRC-checked, decoded and shuffled from the
  shards every epoch (shards in the page cache: this is the CPU cost, not the disk's);
* CACHED (``cache: true``): the node's shared copy (``distmis.shards.node_cache``), materialised
  by the first process (timed separately) and memory-mapped.

What a "volume" costs differs by backend because the output does: tf.data hands Keras float32
batches, so it includes the cast on the CPU; torch hands over the stored dtype (float16 or
float32, uint8 labels) that crosses to the GPU and is widened there (``to_device``).

For each run it prints volumes per second per core (after ``--warmup`` batches), the peak RSS
of the process, and its RSS after the imports (the framework's share). Then it runs TWO
trial processes at once with ``cache: true`` on one node-cache scope and reports their
combined proportional set size (PSS: shared pages split between the sharers) against one copy
of the split, next to what the previous design held (a private decoded copy per process:
float32 image and label per record for tf.data, the stored dtype for torch; computed, not
run, since at 339 cases it does not fit this machine).

Targets (docs/explanation/input-memory.md "Sizing a node"): streaming peak RSS per worker ≤ 4 GB at paper size; two
cached trials ≤ one copy + 2 × the streaming bound; input rate ≥ 42 volumes/s per GPU (1.5×
an H200's ~28 vol/s step rate) from ≤ 8 cores, i.e. vol/s per core × 8 ≥ 42. Memory
figures are extrapolated to the paper's 339 training cases where they depend on the count
(the cache copy); the streaming bound does not. A benchmark, not a test: it exits 0 unless
something breaks.

    python benchmarks/input_scale.py [--cases 12] [--cores 1] [--batches 16] [--workdir DIR]
                                     [--backends tensorflow torch] [--dtypes float32 float16]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import cpu_model, loadavg, paper_size_shards, verdict, version

PAPER_TRAIN_CASES = 339
TARGET_STREAM_RSS = 4e9
TARGET_VOLUMES_PER_GPU = 42.0  # 1.5x the H200's ~28 vol/s (benchmarks/README.md, GPU section)
CORES_PER_GPU = 8
BATCH = 2  # the paper's volumes per replica
SOURCE_SHAPE = (240, 240, 155)
STORED_SHAPE = (240, 240, 152)


# ---------------------------------------------------------------- child: one pipeline run


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _pipeline(spec: dict):
    """An endless iterator of batches of the backend's training pipeline, as a trial builds it."""
    from distmis.config import validate_config
    from distmis.shards.info import DatasetInfo

    buffer = spec.get("shuffle_buffer") or validate_config({})["train"]["shuffle_buffer"]
    info = DatasetInfo.from_dir(Path(spec["tfrecords"]))
    cache, scope, cores = spec["cache"], spec["scope"], spec["cores"]
    if spec["backend"] == "tensorflow":
        from distmis.backends.tensorflow.loop import limit_threads

        limit_threads(cores)  # as the trial does, before TensorFlow starts
        from distmis.backends.tensorflow.dataset import make_dataset

        data = make_dataset(
            info, "train", BATCH, shuffle=True, seed=0, cache=cache, cache_scope=scope,
            repeat=True, shuffle_buffer=buffer, parallel_calls=cores,
        )  # fmt: skip
        return (images.shape[0] for images, _ in data)
    import itertools

    import torch

    from distmis.backends.torch.data import EpochBatches

    torch.set_num_threads(cores)
    steps = max(1, info.count("train") // BATCH)
    data = EpochBatches(
        info.root, "train", BATCH, shuffle=True, seed=0, cache=cache, cache_scope=scope,
        steps_per_epoch=steps, shuffle_buffer=buffer,
        # One core: read in this process; more: that many loader processes, as configured.
        loader_workers=0 if cores == 1 else cores,
    )  # fmt: skip
    return (images.shape[0] for epoch in itertools.count() for images, _ in data.epoch(epoch))


def _stage_iterators(spec: dict) -> dict:
    """Prefixes of the streaming pipeline (and TensorFlow's native reader, for comparison),
    one record at a time: where the time goes."""
    from distmis.shards.info import DatasetInfo

    info = DatasetInfo.from_dir(Path(spec["tfrecords"]))
    files = info.shard_files("train")
    import itertools

    from distmis.shards import buffers
    from distmis.shards.records import decode_example
    from distmis.shards.tfrecord import read_payloads

    pool = buffers.process_pool()  # as both pipelines read

    def payloads():
        for file in itertools.cycle(files):
            yield from read_payloads(file, info.compression, pool)

    k = len(info.label_channels)
    decoded = (decode_example(p, info.image_dtype, k) for p in payloads())
    out = {
        "read + CRC32C (read_payloads)": payloads(),
        "+ decode_example (views)": decoded,
    }
    if spec["backend"] == "tensorflow":
        from distmis.backends.tensorflow.loop import limit_threads

        limit_threads(1)
        import tensorflow as tf

        from distmis.backends.tensorflow.dataset import (
            part_records,
            record_parser,
            record_signature,
        )
        from distmis.shards.parts import Part

        generate = part_records(info, Part(info.splits["train"]))
        signature = record_signature(info)
        raw = tf.data.TFRecordDataset(files, compression_type=info.tf_compression).repeat()
        out = {
            **out,
            "+ tensor copy (from_generator)": iter(
                tf.data.Dataset.from_generator(generate, output_signature=signature).repeat()
            ),
            "TF native: TFRecordDataset": iter(raw),
            "TF native: + parse + decode_raw": iter(raw.map(record_parser(info))),
        }
    return out


def stages(spec: dict) -> dict:
    """Seconds per record of each cumulative stage (after one untimed record)."""
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    out = {}
    for name, records in _stage_iterators(spec).items():
        next(records)
        started = time.perf_counter()
        for _ in range(spec["records"]):
            next(records)
        out[name] = (time.perf_counter() - started) / spec["records"]
    return out


def child(spec: dict) -> dict:
    if spec.get("stages"):
        return stages(spec)
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: spec["cores"]]))
    started = time.perf_counter()
    batches = _pipeline(spec)
    rss_imported = _rss()
    for _ in range(spec["warmup"]):
        next(batches)
    ready = time.perf_counter()
    volumes = sum(next(batches) for _ in range(spec["batches"]))
    seconds = time.perf_counter() - ready
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "volumes": volumes,
        "seconds": seconds,
        "first_batch_seconds": ready - started,
        "rss_imported": rss_imported,
        "peak_rss": usage.ru_maxrss * 1024,
        "loader_peak_rss": children.ru_maxrss * 1024,
    }


# ---------------------------------------------------------------- parent


def _run_child(spec: dict) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True, text=True, env=env, timeout=1800,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"child {spec['backend']} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _two_trials(spec: dict) -> dict:
    """Two cached trial processes at once on one scope; their peak combined PSS (sampled)."""
    import psutil

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--child", json.dumps({**spec, "cores": 1})],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )  # fmt: skip
        for _ in range(2)
    ]
    peak = 0
    watched = [psutil.Process(p.pid) for p in procs]
    while any(p.poll() is None for p in procs):
        total = 0
        for proc in watched:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                total += proc.memory_full_info().pss
        peak = max(peak, total)
        time.sleep(0.2)
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"trial failed:\n{err[-4000:]}")
    return {"peak_pss": peak}


def _record_bytes(info, dtype_size: int) -> tuple[int, int]:
    import numpy as np

    image = int(np.prod(info.image_shape))
    label = int(np.prod(info.label_shape))
    return image * dtype_size + label, (image + label) * 4


def _gb(n: float) -> str:
    return f"{n / 1e9:6.2f} GB"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--cores", type=int, nargs="+", default=[1])
    parser.add_argument("--batches", type=int, default=16, help="timed batches per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches first")
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "torch"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float16"])
    parser.add_argument("--workdir", type=Path, default=None, help="kept; reused if present")
    parser.add_argument(
        "--shuffle-buffer", type=int, default=None, help="records (default: the schema's)"
    )
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0

    from distmis.shards import node_cache
    from distmis.shards.info import DatasetInfo

    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, "
          f"load {loadavg()}; python {platform.python_version()}, numpy {version('numpy')}, "
          f"tensorflow {version('tensorflow')}, torch {version('torch')}")  # fmt: skip
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="distmis-input-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        datasets = paper_size_shards(workdir, args.cases, args.dtypes, SOURCE_SHAPE, STORED_SHAPE)
        root = node_cache.cache_root()
        print(f"node cache root: {root}; batch {BATCH}; timed {args.batches} batches after "
              f"{args.warmup}\n")  # fmt: skip
        header = (
            f"{'backend':<10} {'dtype':<7} {'mode':<9} {'cores':>5} {'vol/s':>7} "
            f"{'vol/s/core':>10} {'first batch':>11} {'RSS imports':>12} {'peak RSS':>10}"
        )
        print(header)
        print("-" * len(header))
        results = []
        for backend in args.backends:
            for dtype, tfrecords in datasets.items():
                scope = node_cache.CacheScope.create(root, f"bench-input-{os.getpid()}")
                try:
                    for cache in (False, True):
                        for cores in args.cores:
                            spec = dict(
                                backend=backend, tfrecords=str(tfrecords), cache=cache,
                                scope=str(scope.path), cores=cores, batches=args.batches,
                                warmup=args.warmup, shuffle_buffer=args.shuffle_buffer,
                            )  # fmt: skip
                            run = _run_child(spec)
                            rate = run["volumes"] / run["seconds"]
                            peak = max(run["peak_rss"], run["loader_peak_rss"])
                            mode = "cached" if cache else "streaming"
                            results.append(dict(spec, mode=mode, rate=rate, dtype=dtype, **run))
                            print(
                                f"{backend:<10} {dtype:<7} {mode:<9} {cores:>5} {rate:>7.2f} "
                                f"{rate / cores:>10.2f} {run['first_batch_seconds']:>10.1f}s "
                                f"{_gb(run['rss_imported']):>12} {_gb(peak):>10}",
                                flush=True,
                            )
                    breakdown = _run_child(
                        dict(backend=backend, tfrecords=str(tfrecords), stages=True, records=8)
                    )
                    print(
                        f"{'':<10} {dtype:<7} streaming, s per record by stage (1 core): "
                        + "; ".join(f"{k} {v:.3f}" for k, v in breakdown.items()),
                        flush=True,
                    )
                    two = _two_trials(
                        dict(
                            backend=backend,
                            tfrecords=str(tfrecords),
                            cache=True,
                            scope=str(scope.path),
                            batches=args.batches,
                            warmup=args.warmup,
                        )  # fmt: skip
                    )
                    info = DatasetInfo.from_dir(tfrecords)
                    stored, decoded = _record_bytes(info, 4 if dtype == "float32" else 2)
                    copy = info.count("train") * stored
                    private = (decoded if backend == "tensorflow" else stored) * info.count("train")
                    results.append(
                        dict(backend=backend, dtype=dtype, mode="two-trials", copy=copy,
                             private=private, stored=stored, **two)
                    )  # fmt: skip
                    print(
                        f"{'':<10} {dtype:<7} 2 trials, cache: combined PSS "
                        f"{_gb(two['peak_pss'])} for a {_gb(copy)} copy "
                        f"({info.count('train')} records); previous design: 2 x "
                        f"{_gb(private)} private",
                        flush=True,
                    )
                finally:
                    scope.remove()
        _verdicts(results)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _verdicts(results: list[dict]) -> None:
    print("\nagainst the targets (paper size; 339 training cases where the count matters):")
    for r in results:
        if r["mode"] == "streaming":
            peak = max(r["peak_rss"], r["loader_peak_rss"])
            print(
                f"  {r['backend']:<10} {r['dtype']:<7} streaming, {r['cores']} core(s): peak RSS "
                f"{_gb(peak)} <= 4 GB: {verdict(peak <= TARGET_STREAM_RSS)}; "
                f"{r['rate'] / r['cores']:.2f} vol/s/core x {CORES_PER_GPU} = "
                f"{r['rate'] / r['cores'] * CORES_PER_GPU:.1f} >= {TARGET_VOLUMES_PER_GPU:g}: "
                f"{verdict(r['rate'] / r['cores'] * CORES_PER_GPU >= TARGET_VOLUMES_PER_GPU)}"
            )
        elif r["mode"] == "cached":
            rate = r["rate"] / r["cores"] * CORES_PER_GPU
            print(
                f"  {r['backend']:<10} {r['dtype']:<7} cached, {r['cores']} core(s): "
                f"{r['rate'] / r['cores']:.2f} vol/s/core x {CORES_PER_GPU} = {rate:.1f} >= "
                f"{TARGET_VOLUMES_PER_GPU:g}: {verdict(rate >= TARGET_VOLUMES_PER_GPU)}"
            )
    streams = {
        (r["backend"], r["dtype"]): max(r["peak_rss"], r["loader_peak_rss"])
        for r in results
        if r["mode"] == "streaming"
    }
    for r in results:
        if r["mode"] != "two-trials":
            continue
        bound = r["copy"] + 2 * streams[(r["backend"], r["dtype"])]
        paper_copy = PAPER_TRAIN_CASES * r["stored"]
        paper_private = PAPER_TRAIN_CASES * r["private"] / (r["copy"] / r["stored"])
        print(
            f"  {r['backend']:<10} {r['dtype']:<7} 2 cached trials: {_gb(r['peak_pss'])} <= copy"
            f" + 2 x streaming peak = {_gb(bound)}: {verdict(r['peak_pss'] <= bound)}; at 339"
            f" cases one copy is {_gb(paper_copy)} per node (previous design: "
            f"{_gb(paper_private)} per trial)"
        )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
