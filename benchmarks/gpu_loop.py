"""The real torch training loop on one GPU at the paper's size, against the bare step.

Prepared for a GPU machine that has PyTorch but neither Ray nor TensorFlow (run it through
``benchmarks/gpu_loop.sh``, which installs the carried wheels first). In one run it:

1. synthesises ``--cases`` BraTS-size cases (240×240×155×4) and converts them with the
   project's TensorFlow-free writer to 240×240×152 shards, float16 and float32
   (``_common.paper_size_shards``, as ``input_scale.py``);
2. times ``gpu_unet.py``'s bare step (random tensors already on the GPU, the loop's own
   :class:`TrainingStep`) at the same batch, bf16 autocast + ``channels_last_3d``;
3. runs the REAL loop — ``distmis.train.local.run_local`` → ``run_trial`` →
   ``TorchTrialSteps`` (``EpochBatches``, pinned batches, non-blocking copies, the on-device
   cast, bf16 autocast, ``channels_last_3d``, validation and checkpoints every epoch) — once
   per (dtype, cache) in ``--loops``, each in a fresh process, one configuration for
   ``--epochs`` epochs. The steps are instrumented, not copied: the batch iterator is timed
   on the host (input wait: the loop blocked on the next batch) and each step is bracketed
   by CUDA events (GPU time of copy + cast + step);
4. prints, per loop run: steady training vol/s (epochs after ``--skip-epochs``) against the
   bare step (target ≥ 0.9), whole-epoch vol/s with validation and checkpoint, input wait
   and GPU share of the training time, GPU peak memory, host peak RSS of the trainer and of
   its largest loader worker.

``--device cpu --small`` runs every step on the CPU at a small size (a dry run: it checks the
script, not a speed); ``--allow-only FILE...`` first refuses to import any distribution not
named in the files (the machine's package list and the carry list), so a dry run here proves
the GPU machine has everything the script imports. ``--check-carry DIR`` checks that every
wheel in DIR has its requirements on the machine or among the wheels. A benchmark: it exits
0 unless something breaks, and reports numbers only from the device it ran on.

    python benchmarks/gpu_loop.py [--cases 24] [--epochs 6] [--batch 2] [--cores 8]
                                  [--loops float16:cached float16:streaming float32:streaming]
                                  [--workdir DIR] [--json FILE] [--device cuda|cpu] [--small]
                                  [--allow-only FILE ...] [--check-carry DIR]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE_SHAPE = (240, 240, 155)
STORED_SHAPE = (240, 240, 152)
SMALL_SOURCE_SHAPE = (40, 40, 28)
SMALL_STORED_SHAPE = (32, 32, 24)
TARGET_RATIO = 0.9  # loop vol/s over bare vol/s (issue 14)
LOOPS = ("float16:cached", "float16:streaming", "float32:streaming")
# The machine's Python: wheel requirements are evaluated for it.
DEVICE_PYTHON = "3.12"


# ---------------------------------------------------------------- what may be imported


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_names(path: Path) -> set[str]:
    """Distribution names in a list file (one per line, ``#`` comments, ``==`` pins allowed)."""
    names = set()
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(_normalise(re.split(r"[=<>!~\s\[;]", line, maxsplit=1)[0]))
    return names


RESTRICTED_ENV = "DISTMIS_GPU_LOOP_SITE"


def restricted_site(allowed: set[str], target: Path) -> Path:
    """A site folder of links to the installed distributions named in ``allowed`` alone.

    Run with ``python -S`` and this folder (and ``src/``) on ``PYTHONPATH``, a process sees
    the standard library, the project and these distributions, and nothing else: a missing
    package is missing (``importlib.util.find_spec`` says None), as on the GPU machine.
    """
    target.mkdir(parents=True, exist_ok=True)
    for dist in importlib.metadata.distributions():
        name = _normalise(dist.metadata["Name"] or "")
        if name not in allowed or name == "distmis":
            continue
        for top in {f.parts[0] for f in dist.files or () if f.parts and f.parts[0] != ".."}:
            source, link = Path(dist.locate_file(top)), target / top
            if source.exists() and not link.exists() and top not in ("bin", "__pycache__"):
                link.symlink_to(source)
    return target


def _restrict_and_reexec(argv: list[str], allow_only: list[Path], workdir: Path) -> None:
    """Re-run this script with ``-S`` over :func:`restricted_site` of the ``--allow-only``
    lists (its children inherit it). Returns only when already restricted."""
    if os.environ.get(RESTRICTED_ENV):
        return
    allowed = set().union(*(read_names(p) for p in allow_only))
    site = restricted_site(allowed, workdir / "site")
    env = {
        **os.environ,
        RESTRICTED_ENV: str(site),
        "PYTHONPATH": os.pathsep.join([str(site), str(HERE.parent / "src"), str(HERE)]),
    }
    print(f"restricted to {len(allowed)} distributions (site {site})", flush=True)
    os.execve(sys.executable, [sys.executable, "-S", str(Path(__file__).resolve()), *argv], env)


def check_carry(wheels_dir: Path, device_list: Path) -> list[str]:
    """Problems with the carried wheels: requirements (for Python 3.12 on Linux x86-64)
    that are neither on the machine nor carried, two versions of one wheel, wrong tags."""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    environment = {
        **default_environment(),
        "python_version": DEVICE_PYTHON,
        "python_full_version": f"{DEVICE_PYTHON}.0",
        "sys_platform": "linux",
        "platform_machine": "x86_64",
        "implementation_name": "cpython",
        "extra": "",
    }
    wheels = sorted(Path(wheels_dir).glob("*.whl"))
    if not wheels:
        return [f"no wheels in {wheels_dir} (benchmarks/gpu_loop.sh --fetch-wheels)"]
    on_machine = read_names(device_list)
    carried: dict[str, list[str]] = {}
    problems = []
    for wheel in wheels:
        name, _, rest = wheel.name.partition("-")
        carried.setdefault(_normalise(name), []).append(wheel.name)
        tags = wheel.name[:-4].split("-")[-3:]
        if tags[0] not in ("py3", "py2.py3", "cp312") and "abi3" not in tags[1]:
            problems.append(f"{wheel.name}: not built for CPython 3.12")
        if "linux" not in tags[2] and tags[2] != "any":
            problems.append(f"{wheel.name}: not a Linux wheel")
    for name, files in carried.items():
        if len(files) > 1:
            problems.append(f"two versions of {name}: {files}")
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
            text = archive.read(metadata).decode()
        for line in text.splitlines():
            if not line.startswith("Requires-Dist:"):
                continue
            requirement = Requirement(line.split(":", 1)[1].strip())
            if requirement.marker is not None and not requirement.marker.evaluate(environment):
                continue
            needed = _normalise(requirement.name)
            if needed not in on_machine and needed not in carried:
                problems.append(f"{wheel.name} needs {requirement}: neither there nor carried")
    return problems


# ---------------------------------------------------------------- child: one loop run


def _rss_peaks() -> dict[str, float]:
    """Peak RSS (GB) of this process and of its largest finished child (loader workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {"trainer_peak_rss_gb": own / 1e9, "loader_worker_peak_rss_gb": children / 1e9}


class Timings:
    """Per-epoch host and GPU times of the instrumented loop's training batches."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.epochs: list[dict] = []
        self._spans: list = []  # (start, end) CUDA events, or host seconds on the CPU
        self._begin = None

    def _now(self):
        import torch

        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def epoch_batches(self, batches):
        """One epoch's batch iterator, timing how long the loop waits for each batch; the
        epoch's figures are closed when the loop asks past its last batch."""
        import torch

        epoch = {"wait_s": 0.0, "steps": 0, "volumes": 0}
        self.epochs.append(epoch)
        self._spans = []
        started = time.perf_counter()
        iterator = iter(batches)
        while True:
            asked = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                break
            epoch["wait_s"] += time.perf_counter() - asked
            epoch["steps"] += 1
            epoch["volumes"] += int(batch[0].shape[0])
            yield batch
        if self.cuda:
            torch.cuda.synchronize()
        epoch["train_s"] = time.perf_counter() - started
        if self.cuda:
            epoch["gpu_s"] = sum(a.elapsed_time(b) for a, b in self._spans) / 1000.0
        else:
            epoch["gpu_s"] = sum(self._spans)

    def begin_step(self) -> None:
        self._begin = self._now()

    def end_step(self) -> None:
        end = self._now()
        self._spans.append((self._begin, end) if self.cuda else end - self._begin)


class TimedEpochs:
    """The trial's ``EpochBatches`` with each training epoch timed by :class:`Timings`."""

    def __init__(self, batches, timings: Timings) -> None:
        self._batches, self._timings = batches, timings

    def __getattr__(self, name):
        return getattr(self._batches, name)

    def epoch(self, epoch: int):
        return self._timings.epoch_batches(self._batches.epoch(epoch))


class TimedStep:
    """The trial's ``TrainingStep``: ``to_device`` (copy + cast) through the step bracketed
    by CUDA events (host timers on the CPU). Validation's ``to_device`` calls open a bracket
    no step closes; they are never counted."""

    def __init__(self, step, timings: Timings) -> None:
        self._step, self._timings = step, timings

    def __getattr__(self, name):
        return getattr(self._step, name)

    def to_device(self, batch):
        self._timings.begin_step()
        return self._step.to_device(batch)

    def __call__(self, images, labels):
        out = self._step(images, labels)
        self._timings.end_step()
        return out


def instrumented_steps(timings: Timings):
    """A steps builder: the backend's real ``TorchTrialSteps`` (its ``train_epoch``,
    ``validate``, checkpoints untouched) with its training batches and step timed."""
    from distmis.backends.torch.loop import TorchTrialSteps

    def build(trial, runner):
        steps = TorchTrialSteps(trial, runner)
        steps.train_batches = TimedEpochs(steps.train_batches, timings)
        steps.step = TimedStep(steps.step, timings)
        return steps

    return build


def loop_child(spec: dict) -> dict:
    """One real local run (one configuration) in this process; its timings as a dict."""
    import torch

    from distmis.config import validate_config
    from distmis.hparams import HParams
    from distmis.train.local import run_local
    from distmis.train.settings import TrainSettings

    cuda = spec["device"] == "cuda"
    # A fresh run: a record left by an earlier run in this workdir would skip the trial.
    shutil.rmtree(spec["out"], ignore_errors=True)
    config = validate_config(
        {
            "train": {
                "backend": "torch",
                "use_gpu": cuda,
                "epochs": spec["epochs"],
                "batch_size_per_replica": spec["batch"],
                "cpus_per_worker": spec["cores"],
                "cache": spec["cache"],
                "cache_dir": spec["cache_dir"],
                # On the CPU (the dry run) bf16 with channels_last_3d is refused: PyTorch's
                # CPU bf16 Conv3d weight gradient in that layout sometimes comes back NaN.
                "torch": {"precision": "bf16", "channels_last_3d": cuda},
                # One configuration: lr 1e-4, the other hyperparameters the grid's defaults.
                "search_space": HParams(lr=1e-4).as_space(),
            }
        }
    )
    settings = TrainSettings.from_config(
        config["train"],
        mode="experiment",
        gpus=1,
        tfrecord_dir=Path(spec["tfrecords"]),
        out_dir=Path(spec["out"]),
    )
    from dataclasses import replace

    from distmis.shards import node_cache

    scope = node_cache.CacheScope.create(node_cache.cache_root(spec["cache_dir"]), "gpu-loop")
    settings = replace(settings, runner="local", cache_scope=str(scope.path))
    timings = Timings(cuda)
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    try:
        (record,) = run_local(
            settings,
            settings.configurations(),
            lambda r: None,
            build_steps=instrumented_steps(timings),
        )
    finally:
        scope.remove()
    wall = time.perf_counter() - started
    from distmis.run_folder import RESULT_FILE, TrialResult, trial_folder

    result = TrialResult.read(trial_folder(Path(spec["out"]), record.trial_id) / RESULT_FILE)
    steady = timings.epochs[spec["skip_epochs"] :] or timings.epochs[-1:]
    volumes = sum(e["volumes"] for e in steady)
    train_s = sum(e["train_s"] for e in steady)
    return {
        "loop": f"{spec['dtype']}:{'cached' if spec['cache'] else 'streaming'}",
        "status": record.status,
        "error": record.error,
        "epochs": timings.epochs,
        "steady_epochs": len(steady),
        "train_vol_s": volumes / train_s,
        "input_wait_share": sum(e["wait_s"] for e in steady) / train_s,
        # Share of the training time between a step's first copy and its end (CUDA events).
        "gpu_share": sum(e["gpu_s"] for e in steady) / train_s,
        "fit_vol_s": result.volumes_trained / result.fit_seconds,
        "wall_s": wall,
        "val_dice": record.val_dice,
        "loader_workers": settings.backend_options["loader_workers"],
        "gpu_peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        **_rss_peaks(),
    }


def bare_child(spec: dict) -> dict:
    """``gpu_unet.py``'s bare bf16 + channels_last_3d step at the loop's shape and batch."""
    sys.path.insert(0, str(HERE))
    import gpu_unet

    argv = [
        "--shape", *map(str, spec["shape"]), "--batch", str(spec["batch"]),
        "--steps", str(spec["bare_steps"]), "--warmup", "5", "--modes", "bf16",
        "--channels-last-3d", "--device", spec["device"],
    ]  # fmt: skip
    args = gpu_unet.parse_args(argv)
    import torch

    torch.backends.cudnn.benchmark = True
    return gpu_unet.run_mode("bf16", args, torch.device(spec["device"]))


def run_child(kind: str, spec: dict) -> dict:
    """``kind`` (loop or bare) in a fresh interpreter, so each peak RSS is its own."""
    # -S again when restricted: the child must see the same packages as this process.
    site_flag = ["-S"] if sys.flags.no_site else []
    command = [sys.executable, *site_flag, str(Path(__file__).resolve())]
    command += ["--child", kind, json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {
            "error": done.stderr.strip().splitlines()[-1:] or ["no output"],
            "log": done.stderr[-4000:],
        }
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- parent


def environment() -> dict:
    import numpy
    import torch

    info = {
        "date": time.strftime("%Y-%m-%d"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "numpy": numpy.__version__,
        "cores": len(os.sched_getaffinity(0)),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    sys.path.insert(0, str(HERE))
    from _common import cpu_model

    info["cpu"] = cpu_model()
    return info


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=24, help="synthetic cases (75%% train)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--skip-epochs", type=int, default=2, help="warm-up epochs not timed")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--bare-steps", type=int, default=30)
    parser.add_argument("--cores", type=int, default=8, help="cpus_per_worker of the loop")
    parser.add_argument("--loops", nargs="+", default=list(LOOPS), help="dtype:cached|streaming")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--small", action="store_true", help="small volumes (dry run)")
    parser.add_argument("--allow-only", action="append", default=[], type=Path)
    parser.add_argument("--check-carry", type=Path, default=None, help="wheel folder to check")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for loop in args.loops:
        dtype, _, cache = loop.partition(":")
        if dtype not in ("float16", "float32") or cache not in ("cached", "streaming"):
            parser.error(f"--loops takes float16|float32:cached|streaming, got {loop!r}")
    if args.skip_epochs >= args.epochs:
        parser.error("--skip-epochs must be below --epochs")
    return args


def _fmt(value, digits=2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        kind, spec = args.child[0], json.loads(args.child[1])
        result = loop_child(spec) if kind == "loop" else bare_child(spec)
        print(json.dumps(result))
        return 0
    if args.check_carry is not None:
        problems = check_carry(args.check_carry, HERE / "device_packages.txt")
        for problem in problems:
            print(f"carry: {problem}")
        print(f"carry check: {len(problems)} problem(s) in {args.check_carry}")
        if problems:
            return 1
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="distmis-gpu-loop-"))
    if args.allow_only:
        _restrict_and_reexec([*argv, "--workdir", str(workdir)], args.allow_only, workdir)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: this run needs the GPU machine (or --device cpu --small)")
        return 1
    env = environment()
    print("environment:", json.dumps(env))
    sys.path.insert(0, str(HERE))
    from _common import paper_size_shards

    source, stored = (
        (SMALL_SOURCE_SHAPE, SMALL_STORED_SHAPE) if args.small else (SOURCE_SHAPE, STORED_SHAPE)
    )
    started = time.perf_counter()
    dtypes = sorted({loop.partition(":")[0] for loop in args.loops})
    datasets = paper_size_shards(
        workdir, args.cases, dtypes, source, stored, workers=min(16, env["cores"])
    )
    print(
        f"data ready in {time.perf_counter() - started:.0f} s: {args.cases} cases {source} -> {stored}"
    )
    common = {"device": args.device, "batch": args.batch, "shape": list(stored)}
    bare = run_child("bare", {**common, "bare_steps": args.bare_steps})
    print("bare step:", json.dumps(bare))
    results = []
    for loop in args.loops:
        dtype, _, cache = loop.partition(":")
        spec = {
            **common,
            "dtype": dtype,
            "cache": cache == "cached",
            "tfrecords": str(datasets[dtype]),
            "out": str(workdir / f"run-{dtype}-{cache}"),
            "cache_dir": str(workdir / "cache") if args.device == "cpu" else None,
            "epochs": args.epochs,
            "skip_epochs": args.skip_epochs,
            "cores": args.cores,
        }
        result = run_child("loop", spec)
        results.append(result)
        print(f"loop {loop}:", json.dumps({k: v for k, v in result.items() if k != "epochs"}))

    bare_rate = bare.get("volumes_per_s")
    print()
    print(
        f"{env.get('gpu', env['cpu'])}, torch {env['torch']} (CUDA {env['cuda']}), "
        f"{args.cases} cases {stored}, batch {args.batch}, bf16 + channels_last_3d"
    )
    print(f"bare step: {_fmt(bare_rate)} vol/s, {_fmt(bare.get('peak_memory_gib'))} GiB")
    header = ("loop", "train vol/s", "÷ bare", "epoch vol/s", "input wait", "in steps",
              "GPU GiB", "RSS GB", "worker RSS GB", "verdict")  # fmt: skip
    print(" | ".join(header))
    for r in results:
        if "train_vol_s" not in r:
            print(f"{r.get('loop', '?')} | failed: {r.get('error')}")
            continue
        ratio = r["train_vol_s"] / bare_rate if bare_rate else None
        verdict = "-" if ratio is None else ("PASS" if ratio >= TARGET_RATIO else "MISS")
        print(" | ".join([
            r["loop"], _fmt(r["train_vol_s"]), _fmt(ratio), _fmt(r["fit_vol_s"]),
            f"{100 * r['input_wait_share']:.0f} %", f"{100 * r['gpu_share']:.0f} %",
            _fmt(r["gpu_peak_gib"]), _fmt(r["trainer_peak_rss_gb"]),
            _fmt(r["loader_worker_peak_rss_gb"]), verdict,
        ]))  # fmt: skip
        if ratio is not None and ratio < TARGET_RATIO:
            other = 1 - r["input_wait_share"] - r["gpu_share"]
            where = (
                "waiting for input" if r["input_wait_share"] >= other else "host work between steps"
            )
            print(
                f"  below target: input wait {100 * r['input_wait_share']:.0f} %, in steps "
                f"{100 * r['gpu_share']:.0f} %, other {100 * other:.0f} % of the training "
                f"time: mostly {where}"
            )
    if args.device == "cpu":
        print("(a CPU dry run: these numbers say nothing about a GPU)")
    if args.json:
        args.json.write_text(
            json.dumps({"environment": env, "bare": bare, "loops": results}, indent=2)
        )
    return 0 if all("train_vol_s" in r for r in results) and "volumes_per_s" in bare else 1


if __name__ == "__main__":
    sys.exit(main())
