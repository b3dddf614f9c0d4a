"""The ``distmis`` command: every pipeline stage, runnable by hand.

Each subcommand is a thin caller of the library; bad input ends with a one-line
reason on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from distmis import backends, modes
from distmis.errors import DistmisError

log = logging.getLogger("distmis")


def _three_ints(parser: argparse.ArgumentParser, flag: str, **kwargs) -> None:
    parser.add_argument(flag, nargs=3, type=int, metavar=("X", "Y", "Z"), **kwargs)


def _cmd_synthesize(args: argparse.Namespace) -> None:
    from distmis.prepare.synthetic import synthesize_dataset

    task = synthesize_dataset(
        Path(args.out), args.cases, tuple(args.shape), args.seed, workers=args.workers
    )
    print(task)


def _cmd_download(args: argparse.Namespace) -> None:
    from distmis.prepare.download import fetch_msd

    task = fetch_msd(
        Path(args.out),
        url=args.url,
        md5=args.md5,
        archive=Path(args.archive) if args.archive else None,
    )
    print(task)


def _convert_params(args: argparse.Namespace):
    import copy

    from distmis.config import read_config, validate_config
    from distmis.prepare.convert import ConvertParams
    from distmis.prepare.msd import open_task

    raw = read_config(_config_paths(args))
    preprocess = raw.setdefault("data", {}).setdefault("preprocess", {})
    # Command-line flags override the config file, key by key, before validation.
    overrides = {
        "shape": args.shape,
        "resize": args.resize,
        "labels": args.labels,
        "split": dict(zip(("train", "val", "test"), args.split, strict=True))
        if args.split
        else None,
        "split_seed": args.seed,
        "shards": dict(zip(("train", "val", "test"), args.shards, strict=True))
        if args.shards
        else None,
        "compression": args.compression,
        "image_dtype": args.image_dtype,
        "skip_bad_cases": True if args.skip_bad_cases else None,
    }
    preprocess.update({key: value for key, value in overrides.items() if value is not None})
    # Flags and file first (their errors before the folder's), then `auto` shard counts
    # sized from this folder's cases rather than the configured source's.
    validate_config(copy.deepcopy(raw))
    config = validate_config(raw, cases=len(open_task(Path(args.msd_dir)).cases))
    return ConvertParams.from_config(config["data"]["preprocess"])


def _cmd_convert(args: argparse.Namespace) -> None:
    from distmis.prepare.convert import convert_dataset

    info = convert_dataset(Path(args.msd_dir), Path(args.out), _convert_params(args), args.workers)
    counts = {split: entry["count"] for split, entry in info["splits"].items()}
    print(json.dumps({"out": args.out, "records": counts, "skipped": len(info["skipped"])}))


def _cmd_inspect(args: argparse.Namespace) -> None:
    from distmis.shards.inspect import inspect_dataset

    print(json.dumps(inspect_dataset(Path(args.dir)), indent=2))


def _cmd_train(args: argparse.Namespace) -> None:
    from distmis.config import load_config
    from distmis.train.run import run_training
    from distmis.train.settings import TrainSettings

    config = load_config(_config_paths(args))
    gpus = args.g if args.g is not None else args.gpus
    settings = TrainSettings.from_config(
        config["train"],
        mode=args.mode,
        gpus=gpus or 1,
        tfrecord_dir=Path(args.data),
        out_dir=Path(args.out),
        backend=args.backend,
        gpus_per_trial=args.gpus_per_trial,
    )
    if args.seed_config:
        settings = settings.with_seed_config(Path(args.seed_config))
        if gpus is not None:
            # -g N / --gpus N on the command line beat the file, as with the original's -g.
            settings = replace(settings, gpus=gpus)
    if args.epochs is not None:
        settings = replace(settings, epochs=args.epochs)
    if args.runner != settings.runner:
        settings = replace(settings, runner=args.runner)  # replace() validates it again
    summary = run_training(settings)
    keys = ("backend", "mode", "gpus", "makespan_seconds", "trial_count", "failed_count", "best")
    print(json.dumps({k: summary[k] for k in keys}))


def _step_seconds(values: Sequence[str]) -> dict[str, float]:
    """``--gpu-step-seconds`` values: ``h200`` (PyTorch's measured H200 step), ``S`` (every
    backend) or ``BACKEND=S``."""
    from distmis.plan.model import H200_STEP_SECONDS

    steps: dict[str, float] = {}
    for value in values:
        if value == "h200":
            steps["torch"] = H200_STEP_SECONDS
            continue
        backend, _, seconds = value.rpartition("=")
        try:
            step = float(seconds)
        except ValueError:
            raise DistmisError(
                f"--gpu-step-seconds takes h200, S or BACKEND=S (e.g. torch=0.0717), got {value!r}"
            ) from None
        for name in [backend] if backend else backends.NAMES:
            if name not in backends.NAMES:
                raise DistmisError(f"--gpu-step-seconds: unknown backend {name!r}")
            steps[name] = step
    return steps


def _cmd_plan(args: argparse.Namespace) -> None:
    from distmis.plan.run import Projection, format_plan, run_plan

    steps = _step_seconds(args.gpu_step_seconds)
    path = run_plan(
        Path(args.results),
        Path(args.out),
        gpus=args.gpus,
        gpus_per_node=args.gpus_per_node,
        ks=args.gpus_per_trial,
        calibrations=[Path(p) for p in args.calibration],
        projection=Projection(
            step_seconds=steps,
            grid_size=args.grid_size,
            epochs=args.epochs,
            train_volumes=args.train_volumes,
            val_volumes=args.val_volumes,
        )
        if steps
        else None,
        asha=tuple(args.asha) if args.asha else None,
        inter_node_bandwidth=args.inter_node_bandwidth,
    )
    print(format_plan(path))
    print(json.dumps({"plan_csv": str(path)}))


def _config_paths(args: argparse.Namespace) -> list[Path] | None:
    """``--config``'s files, in order (later ones overlay earlier ones), or None."""
    return [Path(path) for path in args.config] if args.config else None


def _runs_under(folder: Path) -> list[Path]:
    """The ``{backend}/{mode}/{G}gpu`` runs under ``folder`` (ContractError if none)."""
    from distmis.scaling.timings import load_runs

    return [run.directory for run in load_runs(folder)]


def _cmd_scaling(args: argparse.Namespace) -> None:
    from distmis.config import load_config
    from distmis.scaling.run import run_scaling

    config = load_config(_config_paths(args))
    report = config["report"]
    written = run_scaling(
        None,
        Path(args.out),
        report["references"],
        quality_tolerance=report["quality_tolerance"],
        quality_target=report["quality_target"],
        run_dirs=[run for folder in args.results for run in _runs_under(Path(folder))],
    )
    print(
        json.dumps(
            {k: [str(p) for p in v] if isinstance(v, list) else str(v) for k, v in written.items()}
        )
    )


def _cmd_ray_cluster(args: argparse.Namespace) -> None:
    from distmis.cluster.ray_cluster import run_with_ray_cluster

    command = args.command_line[1:] if args.command_line[:1] == ["--"] else args.command_line
    if not command:
        raise ValueError("give the command to run after --")
    status = run_with_ray_cluster(
        command,
        cpus_per_node=args.cpus_per_node,
        gpus_per_node=args.gpus_per_node,
        cache_dir=args.cache_dir,
    )
    if status != 0:
        raise SystemExit(status)


def _cmd_preflight(args: argparse.Namespace) -> None:
    from distmis.fileio import write_json
    from distmis.train.preflight import check, describe, raise_for_problems

    report = check(args.backend, gpus=args.gpus, check_nccl=args.nccl)
    # --json: the report whatever it found (training jobs read it from a child process);
    # --out: written only when the check passed, so a failed check leaves no output behind.
    print(json.dumps(report, indent=2) if args.json else describe(report))
    raise_for_problems(report)
    if args.out:
        write_json(Path(args.out), report)


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from distmis.evaluate.run import evaluate_model

    summary = evaluate_model(
        Path(args.model),
        Path(args.data),
        Path(args.out),
        threshold=args.threshold,
        split=args.split,
        overlay_cases=args.overlay_cases,
    )
    print(json.dumps({k: summary[k] for k in ("model", "trial_id", "cases", "regions")}))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distmis", description="Distributed hyperparameter tuning of a 3D U-Net on BraTS."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synthesize", help="write an offline BraTS-like dataset (MSD layout)")
    p.add_argument("--out", required=True, help="folder to hold Task01_BrainTumour/")
    p.add_argument("--cases", type=int, default=24)
    _three_ints(p, "--shape", default=[40, 40, 28], help="volume size in voxels")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--workers", type=int, default=1, help="processes")
    p.set_defaults(func=_cmd_synthesize)

    p = sub.add_parser("download", help="fetch, verify and extract MSD Task01_BrainTumour")
    p.add_argument(
        "--out", required=True, help="folder to hold the archive and Task01_BrainTumour/"
    )
    p.add_argument("--url", default=None, help="archive URL (default: the MSD mirror)")
    p.add_argument("--md5", default=None, help="expected md5 (default: the official one)")
    p.add_argument("--archive", default=None, help="use this local tar instead of downloading")
    p.set_defaults(func=_cmd_download)

    p = sub.add_parser("convert", help="NIfTI → TFRecord shards + info.json")
    p.add_argument(
        "--msd-dir", required=True, help="the task folder (holding dataset.json) or its parent"
    )
    p.add_argument("--out", required=True, help="output folder for shards and info.json")
    p.add_argument(
        "--config",
        nargs="+",
        default=None,
        help="config.yaml to take data.preprocess from (later files overlay earlier ones)",
    )
    _three_ints(p, "--shape", default=None, help="stored volume size after crop/pad")
    _three_ints(
        p,
        "--resize",
        default=None,
        help="resample each RAS scan to this grid (same field of view) before the crop/pad, "
        "as the original's --reshape",
    )
    p.add_argument("--labels", choices=["binary", "regions"], default=None)
    p.add_argument("--split", nargs=3, type=float, metavar=("TRAIN", "VAL", "TEST"), default=None)
    p.add_argument("--seed", type=int, default=None, help="split seed")
    p.add_argument("--shards", nargs=3, type=int, metavar=("TRAIN", "VAL", "TEST"), default=None)
    p.add_argument("--compression", choices=["none", "gzip"], default=None)
    p.add_argument("--image-dtype", choices=["float32", "float16"], default=None)
    p.add_argument("--skip-bad-cases", action="store_true")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser(
        "preflight",
        help="check that a backend can train on this node's GPUs (run it on a compute node)",
    )
    p.add_argument("--backend", choices=backends.NAMES, required=True)
    p.add_argument(
        "--gpus",
        type=int,
        default=1,
        help="GPUs it must see here (a training job's GPUs per node; 0: a CPU run, which "
        "records what is there and checks nothing)",
    )
    p.add_argument("--nccl", action="store_true", help="also load NCCL (G > 1)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--out", default=None, help="write the report here when the check passes")
    p.set_defaults(func=_cmd_preflight)

    from distmis.train.settings import RUNNERS

    p = sub.add_parser("train", help="train the grid in one parallelism mode on G GPUs/workers")
    p.add_argument("--mode", choices=modes.NAMES, required=True)
    p.add_argument(
        "--gpus-per-trial",
        type=int,
        default=None,
        help="hybrid mode's k: GPUs per configuration (default: train.gpus_per_trial's first)",
    )
    p.add_argument(
        "--backend",
        choices=backends.NAMES,
        default=None,
        help="framework that trains (default: train.backend of --config, else tensorflow)",
    )
    p.add_argument("--gpus", type=int, default=None, help="G: GPUs (CPU workers without GPUs)")
    p.add_argument("-g", type=int, default=None, help="same as --gpus (the original's flag)")
    p.add_argument("--data", required=True, help="folder with info.json and the shards")
    p.add_argument(
        "--out", required=True, help="results folder, e.g. results/train/torch/data/2gpu"
    )
    p.add_argument(
        "--config",
        nargs="+",
        default=None,
        help="config.yaml (its train section); later files overlay earlier ones, as "
        "snakemake --configfile config.yaml config.asha.yaml does",
    )
    p.add_argument(
        "--seed-config",
        default=None,
        help=(
            "original-DistMIS JSON: num_replicas, batch_size_per_replica, num_epochs, debug "
            "(TensorFlow scripts) or lr, epochs, verbose, nodes, gpus, batch_size, num_workers, "
            "use_gpu (PyTorch extension); -g overrides its G"
        ),
    )
    p.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    p.add_argument(
        "--runner",
        choices=RUNNERS,
        default="ray",
        help=(
            "ray: Ray Train (data) / Ray Tune (experiment); local: the grid one configuration "
            "after another in this process on one device, without Ray (G = 1 only)"
        ),
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("scaling", help="speedup table and figures from the training results")
    p.add_argument(
        "--results",
        nargs="+",
        default=["results/train"],
        help="folder(s) holding {backend}/{mode}/{G}gpu/ (mode: data, experiment, hybrid{k}); "
        "several: one study of all their runs (e.g. the searches of the search study)",
    )
    p.add_argument("--out", default="results/scaling", help="folder for scaling.csv and figures")
    p.add_argument(
        "--config",
        nargs="+",
        default=None,
        help="config.yaml (its report.references, quality_tolerance and quality_target); "
        "later files overlay earlier ones",
    )
    p.set_defaults(func=_cmd_scaling)

    p = sub.add_parser(
        "plan",
        help="predict makespan, speedup and GPU-hours per mode and G from the measured runs",
        description="Calibrate on the measured runs (each measured from its files), predict "
        "every mode at every G, check the prediction against every measured run, and "
        "optionally project another study (--gpu-step-seconds and the size flags) onto GPUs.",
    )
    p.add_argument(
        "--results", default="results/train", help="measured {backend}/{mode}/{G}gpu runs"
    )
    p.add_argument("--out", default="results/plan", help="folder for plan.csv and calibrations")
    p.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--gpus-per-node", type=int, default=4)
    p.add_argument("--gpus-per-trial", type=int, nargs="+", default=[2, 4, 8], help="hybrid k")
    p.add_argument(
        "--calibration",
        action="extend",
        nargs="+",
        default=[],
        metavar="PATH",
        help="calibration_<backend>.json files to use instead of the runs (one per backend)",
    )
    p.add_argument(
        "--gpu-step-seconds",
        action="append",
        default=[],
        metavar="h200|S|BACKEND=S",
        help="project onto GPUs with this training step (batch_size_per_replica volumes): "
        "'h200' = PyTorch's measured H200 bf16 step (0.0717 s at 240x240x152, batch 2), S for "
        "every backend, BACKEND=S for one (repeatable)",
    )
    p.add_argument("--grid-size", type=int, help="projection: configurations (default: measured)")
    p.add_argument("--epochs", type=int, help="projection: epochs per configuration")
    p.add_argument("--train-volumes", type=int, help="projection: training volumes")
    p.add_argument("--val-volumes", type=int, help="projection: validation volumes")
    p.add_argument(
        "--asha",
        type=int,
        nargs=2,
        metavar=("GRACE", "FACTOR"),
        help="predict with ASHA early stopping (grace period, reduction factor)",
    )
    p.add_argument(
        "--inter-node-bandwidth",
        type=float,
        help="bytes/s of an all-reduce ring across nodes (default: measured, or 12.5e9 for GPUs)",
    )
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser(
        "ray-cluster",
        help="inside a SLURM job: start Ray on all its nodes, run a command, stop Ray",
    )
    p.add_argument("--cpus-per-node", type=int, required=True)
    p.add_argument("--gpus-per-node", type=int, default=0)
    p.add_argument(
        "--cache-dir",
        default=None,
        help="node-local folder for the job's shared split caches (train.cache_dir; default "
        "$DISTMIS_CACHE_DIR, else /dev/shm, else $TMPDIR); removed from every node at the end",
    )
    p.add_argument("command_line", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    p.set_defaults(func=_cmd_ray_cluster)

    p = sub.add_parser("evaluate", help="score a model on the test split: metrics, NIfTI, overlays")
    p.add_argument(
        "--model",
        required=True,
        help=(
            "a model card (best_model.json) or model file (.keras or .pt), e.g. "
            "results/train/torch/data/2gpu/best_model.json"
        ),
    )
    p.add_argument("--data", required=True, help="folder with info.json and the shards")
    p.add_argument("--out", required=True, help="results folder, e.g. results/evaluate/torch/data")
    p.add_argument("--threshold", type=float, default=0.5, help="sigmoid cut-off per region")
    p.add_argument("--split", choices=["train", "val", "test"], default="test")
    p.add_argument("--overlay-cases", type=int, default=3, help="cases drawn as overlays")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("inspect", help="JSON statistics of converted shards")
    p.add_argument("dir", help="folder holding info.json and the shards")
    p.set_defaults(func=_cmd_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # TensorFlow's C++ start-up chatter buries the one line a user needs.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handler: Callable[[argparse.Namespace], None] = args.func
    try:
        handler(args)
    except (DistmisError, ValueError) as exc:
        print(f"distmis {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
