"""The Snakemake rules' adapters: one function per rule, named as the rule (the training rules
share :func:`train`, which asks the mode registry which mode the rule runs).

``workflow_scripts/<rule>.py`` calls ``<rule>(snakemake)`` (or ``train(snakemake)``) and nothing else, so what a rule
does with its ``input``, ``output``, ``params`` and ``wildcards`` is here, in one module, under
test. Each function first sends stderr and logging to the rule's log (:func:`start_script`),
then calls one stage's API.

Stages are imported inside the functions, never at the top: a torch training job must never
import TensorFlow, the plotting environment has neither framework nor Ray, and an import that
fails should fail into the rule's log.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any


def start_script(snakemake: Any) -> None:
    """Redirect stderr (tracebacks, TensorFlow/Ray chatter) and logging to ``log[0]``."""
    if snakemake.log:
        sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: SIM115 - lives as long as the job
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )


# --- rules/data.smk ----------------------------------------------------------------------


def synthesize_brats(snakemake: Any) -> Path:
    """An offline BraTS-like dataset in MSD layout at ``output.task``."""
    start_script(snakemake)
    from distmis.prepare.synthetic import synthesize_dataset

    return synthesize_dataset(
        Path(snakemake.output.task).parent,
        int(snakemake.params.cases),
        tuple(snakemake.params.shape),
        int(snakemake.params.seed),
        workers=snakemake.threads,
    )


def download_brats(snakemake: Any) -> Path:
    """Fetch, verify and safely extract the MSD archive into ``output.task``."""
    start_script(snakemake)
    from distmis.prepare.download import fetch_msd

    params = snakemake.params
    return fetch_msd(
        Path(snakemake.output.task).parent,
        url=params.url,
        md5=params.md5 or None,
        archive=Path(params.archive) if params.archive else None,
        progress=False,
    )


def plan_tfrecords(snakemake: Any) -> dict:
    """List, validate and split the cases of ``input.task``; assign them to shards."""
    start_script(snakemake)
    from distmis.fileio import write_json
    from distmis.prepare.convert import ConvertParams, plan_conversion

    params = ConvertParams.from_config(snakemake.params.preprocess)
    plan = plan_conversion(Path(snakemake.input.task), params)
    write_json(snakemake.output.plan, plan)
    return plan


def convert_tfrecords(snakemake: Any) -> dict:
    """Write one shard (``output.shard``) of the plan and its manifest.

    A bad case (or an unusable plan) ends the job with one line naming the shard, the case
    and its problem, in the rule's log and on the job's own stderr, where Snakemake's report
    of the failure shows it (else the user sees only "exit status 1" and a traceback in the
    log); exit status 1, no traceback.
    """
    start_script(snakemake)
    from distmis.errors import CaseError, DistmisError
    from distmis.fileio import read_json, write_json
    from distmis.prepare.convert import convert_shard, find_shard
    from distmis.shards import heap

    heap.reuse_freed_blocks()  # this job's process only converts; see the docstring
    shard_path = Path(snakemake.output.shard)
    try:
        plan = read_json(snakemake.input.plan, "rule plan_tfrecords")
        split, index = find_shard(plan, shard_path.name)
        manifest = convert_shard(plan, split, index, shard_path)
    except DistmisError as exc:
        line = f"convert_tfrecords {shard_path.name}: error: {exc}"
        if isinstance(exc, CaseError):
            line += (
                "; fix or remove the case, or set data.preprocess.skip_bad_cases: true to "
                "leave it out"
            )
        logging.getLogger(__name__).error("%s", line)
        print(line, file=sys.__stderr__, flush=True)
        raise SystemExit(1) from None
    write_json(snakemake.output.manifest, manifest)
    return manifest


def index_tfrecords(snakemake: Any) -> dict:
    """Merge the shard manifests into ``output.info``."""
    start_script(snakemake)
    from distmis.fileio import read_json
    from distmis.prepare.convert import write_info

    plan = read_json(snakemake.input.plan, "rule plan_tfrecords")
    manifests = [read_json(p, "rule convert_tfrecords") for p in snakemake.input.manifests]
    return write_info(plan, manifests, Path(snakemake.output.info))


# --- rules/train.smk ---------------------------------------------------------------------


def preflight(snakemake: Any) -> dict:
    """Rule preflight: on a node like the training jobs', check that ``{backend}`` can train
    on ``params.gpus`` GPUs (0: a CPU run, recorded only) and write ``output.report``; else end
    with one line naming the host, the framework, what it saw and the fix, in the log and on
    the job's own stderr, where Snakemake's report of the failure shows it."""
    start_script(snakemake)
    from distmis.errors import DeviceError
    from distmis.fileio import write_json
    from distmis.train.preflight import check, describe, raise_for_problems

    backend = snakemake.wildcards.backend
    report = check(backend, gpus=int(snakemake.params.gpus), check_nccl=bool(snakemake.params.nccl))
    logging.getLogger(__name__).info("preflight %s:\n%s", backend, describe(report))
    try:
        raise_for_problems(report)
    except DeviceError as exc:
        line = f"preflight {backend}: error: {exc}"
        logging.getLogger(__name__).error("%s", line)
        print(line, file=sys.__stderr__, flush=True)
        raise SystemExit(1) from None
    write_json(snakemake.output.report, report)
    return report


def train(snakemake: Any) -> dict | None:
    """The whole grid in the mode whose rule runs this (:func:`distmis.modes.from_rule`), for
    ``{backend}`` on ``{gpus}`` GPUs, with ``{k}`` GPUs per trial where the mode takes k."""
    from distmis import modes

    start_script(snakemake)
    mode = modes.from_rule(snakemake.rule)
    k = int(snakemake.wildcards.k) if mode.takes_k else None
    return _train(snakemake, mode.name, gpus_per_trial=k)


def _train(snakemake: Any, mode: str, gpus_per_trial: int | None = None) -> dict | None:
    """Run ``mode`` for the rule's ``{backend}`` and ``{gpus}`` with the validated ``train``
    config; the run's summary, or None when it ran in a child process (below).

    Outside SLURM the run starts its own local Ray. Inside a SLURM job it reruns itself as
    ``distmis train`` under :func:`distmis.cluster.ray_cluster.run_with_ray_cluster`, which
    starts one Ray cluster across the job's nodes with ports and an auth token of its own (so
    jobs sharing a node do not collide) and stops it whatever happens.
    """
    from distmis.cluster.memory import SplitSizes, training_memory
    from distmis.train.run import run_training
    from distmis.train.settings import TrainSettings

    train = snakemake.params.train
    gpus = int(snakemake.wildcards.gpus)
    backend = snakemake.wildcards.backend
    out_dir = Path(snakemake.params.out)
    tfrecord_dir = Path(snakemake.input.info).parent
    sizes = SplitSizes.from_info(Path(snakemake.input.info))
    request = training_memory(backend, mode, gpus, gpus_per_trial, train, sizes)
    asked = getattr(getattr(snakemake, "resources", None), "mem_mb", None)
    memory_line = request.describe(asked, os.environ.get("SLURM_MEM_PER_NODE"))
    logging.getLogger(__name__).info("memory %s", memory_line)
    settings = TrainSettings.from_config(
        train,
        mode=mode,
        gpus=gpus,
        tfrecord_dir=tfrecord_dir,
        out_dir=out_dir,
        backend=backend,
        gpus_per_trial=gpus_per_trial,
    )
    if "SLURM_JOB_ID" not in os.environ or settings.ray_address or os.environ.get("RAY_ADDRESS"):
        return run_training(settings)

    import yaml

    from distmis.cluster.ray_cluster import ClusterError, run_with_ray_cluster
    from distmis.cluster.resources import job_shape

    out_dir.mkdir(parents=True, exist_ok=True)
    config_path = out_dir / "train_config.yaml"
    config_path.write_text(yaml.safe_dump({"train": dict(train)}))
    shape = job_shape(gpus, train["gpus_per_node"], train["cpus_per_worker"], train["use_gpu"])
    command = [
        sys.executable,
        "-m",
        "distmis.cli",
        "train",
        "--mode",
        mode,
        "--backend",
        backend,
        "--gpus",
        str(gpus),
        "--data",
        str(tfrecord_dir),
        "--out",
        str(out_dir),
        "--config",
        str(config_path),
        *(["--gpus-per-trial", str(gpus_per_trial)] if gpus_per_trial is not None else []),
    ]
    status = run_with_ray_cluster(
        command,
        cpus_per_node=shape.cpus_per_node,
        gpus_per_node=shape.gpus_per_node,
        cache_dir=train["cache_dir"],
    )
    if status != 0:
        raise ClusterError(f"training under the job's Ray cluster exited with status {status}")
    return None


# --- rules/evaluate.smk ------------------------------------------------------------------


def evaluate(snakemake: Any) -> dict:
    """One (backend, mode)'s best model on the test split: metrics, predictions, overlays."""
    start_script(snakemake)
    from distmis.evaluate.run import evaluate_model

    output = snakemake.output
    out_dir = Path(output.metrics).parent
    # evaluate_model names its outputs inside out_dir; the rule's must be those names.
    expected = {
        "summary": out_dir / "summary.json",
        "predictions": out_dir / "predictions",
        "overlays": out_dir / "overlays",
    }
    for name, path in expected.items():
        if Path(getattr(output, name)) != path:
            raise ValueError(f"rule output {name} must be {path}, got {getattr(output, name)}")
    return evaluate_model(
        Path(snakemake.input.model),
        Path(snakemake.input.info).parent,
        out_dir,
        threshold=float(snakemake.params.threshold),
        overlay_cases=int(snakemake.params.overlay_cases),
    )


# --- rules/scaling.smk -------------------------------------------------------------------


def scaling(snakemake: Any) -> Path:
    """The table of the input runs, with each evaluated model's test Dice, into ``output.table``;
    ``params.quality_tolerance`` (report.quality_tolerance) decides time_to_best_seconds,
    ``params.quality_target`` (report.quality_target, over all the input runs: the study)
    time_to_target_seconds."""
    start_script(snakemake)
    from distmis.scaling.quality import QualityTarget
    from distmis.scaling.table import attach_test_dice, scaling_table, write_scaling_csv

    target = QualityTarget.from_config(snakemake.params.quality_target)
    table = scaling_table(_rule_runs(snakemake), snakemake.params.quality_tolerance, target)
    table = attach_test_dice(table, [Path(p) for p in snakemake.input.evals])
    return write_scaling_csv(table, Path(snakemake.output.table))


def plot_scaling(snakemake: Any) -> dict[str, list[Path]]:
    """Every figure into the folder of ``output.speedup``.

    The figures come from scaling.csv (so they show what the table says), the timelines
    from the runs' trials.csv and the time-to-quality figure from their trials' epochs.jsonl
    (within ``params.quality_tolerance`` of each run's best, as the table's
    time_to_best_seconds); the time-to-target figure draws the table's time_to_target_seconds
    and quality_target_dice. A figure the rule declares but the data cannot give is an
    error here rather than a confusing missing-output failure later.
    """
    start_script(snakemake)
    from distmis.scaling.plot import parse_references, plot_all, timeline_stems
    from distmis.scaling.table import read_scaling_csv

    runs = _rule_runs(snakemake)
    table = read_scaling_csv(Path(snakemake.input.table))
    out_dir = Path(snakemake.output.speedup).parent
    declared = {Path(p) for p in snakemake.output}
    stems = ["quality", "time_to_target", *timeline_stems(runs)]
    expected = {out_dir / f"{stem}{suffix}" for stem in stems for suffix in (".png", ".pdf")}
    undeclared = expected - declared
    if undeclared:
        raise ValueError(f"plot_scaling would write undeclared outputs: {sorted(undeclared)}")
    references = parse_references(snakemake.params.references)
    return plot_all(table, runs, out_dir, references, snakemake.params.quality_tolerance)


def _rule_runs(snakemake: Any) -> list:
    from distmis.scaling.timings import load_runs

    # Exactly the runs the config asks for (the rule's inputs), not whatever is on disk.
    return load_runs(directories=[Path(p).parent for p in snakemake.input.summaries])


# --- rules/plan.smk ----------------------------------------------------------------------


def plan(snakemake: Any) -> Path:
    """plan.csv and the calibrations from the runs the config asks for, then plan.png.

    ``params``: ``gpus``, ``gpus_per_trial``, ``gpus_per_node``, ``inter_node_bandwidth``,
    ``projection`` (config plan.projection), ``asha`` ([grace, factor] or None) and
    ``references`` (the published speedups drawn on the projection).
    """
    start_script(snakemake)
    from distmis.plan.plot import plot_plan, read_plan_csv
    from distmis.plan.run import Projection, format_plan, run_plan
    from distmis.scaling.plot import parse_references

    params = snakemake.params
    projection = dict(params.projection)
    table = Path(snakemake.output.table)
    path = run_plan(
        None,  # not a folder to search: exactly the runs this config asks for, below
        table.parent,  # plan.csv and calibration_<backend>.json, the rule's outputs
        run_dirs=[Path(summary).parent for summary in snakemake.input.summaries],
        gpus=params.gpus,
        gpus_per_node=params.gpus_per_node,
        ks=params.gpus_per_trial,
        projection=Projection(step_seconds=projection.pop("step_seconds"), **projection)
        if projection.get("step_seconds")
        else None,
        asha=tuple(params.asha) if params.asha else None,
        inter_node_bandwidth=params.inter_node_bandwidth,
    )
    logging.getLogger(__name__).info("plan:\n%s", format_plan(path))
    plot_plan(
        read_plan_csv(path),
        Path(snakemake.output.figure).with_suffix(""),
        parse_references(params.references),
    )
    return path
