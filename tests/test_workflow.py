"""The Snakemake workflow itself (DAG, config validation at start, lint, a real run) and its
rule adapters, :mod:`distmis.workflow`: one per rule, each called by the same-named script."""

from __future__ import annotations

import ast
import csv
import inspect
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from distmis import modes, workflow
from distmis.config import load_config
from distmis.plan.run import TOLERANCE as PLAN_TOLERANCE
from distmis.run_folder import ModelCard, RunSummary, read_trials, read_workers
from tests.scaling.helpers import (
    BACKENDS,
    MODES,
    REFERENCES,
    eval_summary,
    make_results,
    timeline_names,
)

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def snakemake(
    *args: str, workdir: Path, configfile: Path | None = None
) -> subprocess.CompletedProcess:
    command = [SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir)]
    command += ["--configfile", str(configfile or ROOT / "config.yaml")]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([*command, *args], capture_output=True, text=True, env=env, cwd=workdir)


def write_config(path: Path, **preprocess) -> Path:
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["data"]["synthetic"].update(cases=10, shape=[20, 20, 18])
    config["data"]["preprocess"].update({"shape": [16, 16, 16], **preprocess})
    config["train"].update(
        epochs=1, search_space={**config["train"]["search_space"], "lr": [0.005]}
    )
    path.write_text(yaml.safe_dump(config))
    return path


def dry_run_jobs(output: str) -> list[dict]:
    """The jobs `snakemake -n` prints: each one's rule, output (a list), wildcards and
    resources (dicts)."""
    jobs: list[dict] = []
    for line in output.splitlines():
        line = line.strip()
        if line.startswith(("rule ", "localrule ")) and line.endswith(":"):
            jobs.append(
                {
                    "rule": line.split()[-1].rstrip(":"),
                    "output": [],
                    "wildcards": {},
                    "resources": {},
                }
            )
        elif jobs and line.startswith("output: "):
            jobs[-1]["output"] = line.removeprefix("output: ").split(", ")
        elif jobs and line.startswith(("wildcards: ", "resources: ")):
            key, _, pairs = line.partition(": ")
            jobs[-1][key] = dict(pair.split("=", 1) for pair in pairs.split(", "))
    return jobs


def test_dry_run_lists_one_conversion_job_per_shard(tmp_path):
    result = snakemake("-n", "--quiet", "rules", workdir=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    counts = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    # Demo config: shards auto (= 2, the largest data-parallel G) for train and val, 1 test
    # shard; data and experiment at G = 1 and 2, hybrid k = 2 at G = 2 only.
    assert counts["convert_tfrecords"] == 5
    assert counts["train_data_parallel"] == 2 and counts["train_experiment_parallel"] == 2
    assert counts["train_hybrid_parallel"] == 1
    assert counts["scaling"] == 1 and counts["plot_scaling"] == 1
    assert counts["evaluate"] == 3  # data, experiment, hybrid2
    assert counts["synthesize_brats"] == 1 and counts["index_tfrecords"] == 1
    assert "download_brats" not in counts


def test_two_backends_train_and_plot_apart(tmp_path):
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["train"]["backend"] = ["tensorflow", "torch"]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    result = snakemake("-n", workdir=tmp_path, configfile=tmp_path / "c.yaml")
    assert result.returncode == 0, result.stderr
    jobs = dry_run_jobs(result.stdout + result.stderr)
    backends, gpu_counts = ("tensorflow", "torch"), ("1", "2")
    for rule, mode in (
        ("train_data_parallel", "data"),
        ("train_experiment_parallel", "experiment"),
    ):
        train = [job for job in jobs if job["rule"] == rule]
        assert sorted((j["wildcards"]["backend"], j["wildcards"]["gpus"]) for j in train) == [
            (backend, gpus) for backend in backends for gpus in gpu_counts
        ]
        for job in train:
            backend, gpus = job["wildcards"]["backend"], job["wildcards"]["gpus"]
            run = f"results/train/{backend}/{mode}/{gpus}gpu"
            assert sorted(job["output"]) == [
                f"{run}/best_model.json",
                f"{run}/summary.json",
                f"{run}/trials.csv",
            ]
    # Hybrid k = 2 runs at G = 2 only (k must divide G), once per backend.
    hybrid = [job for job in jobs if job["rule"] == "train_hybrid_parallel"]
    assert sorted(
        (j["wildcards"]["backend"], j["wildcards"]["k"], j["wildcards"]["gpus"]) for j in hybrid
    ) == [(backend, "2", "2") for backend in backends]
    outputs = [path for job in jobs if job["rule"].startswith("train_") for path in job["output"]]
    # no two jobs share a file: (data + experiment) × 2 G + hybrid2, × 2 backends, 3 files each
    assert len(outputs) == len(set(outputs)) == 2 * (2 * 2 + 1) * 3
    evaluated = {
        (job["wildcards"]["backend"], job["wildcards"]["mode"])
        for job in jobs
        if job["rule"] == "evaluate"
    }
    assert evaluated == {(b, m) for b in backends for m in ("data", "experiment", "hybrid2")}
    (plot,) = [job for job in jobs if job["rule"] == "plot_scaling"]
    timelines = {Path(p).name for p in plot["output"] if Path(p).name.startswith("timeline_")}
    runs = [(m, g) for m in ("data", "experiment") for g in gpu_counts] + [("hybrid2", "2")]
    assert timelines == {
        f"timeline_{backend}_{mode}_{gpus}gpu{suffix}"
        for backend in backends
        for mode, gpus in runs
        for suffix in (".png", ".pdf")
    }


def test_msd_source_uses_the_download_rule(tmp_path):
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["data"]["source"] = "msd"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--quiet", "rules", workdir=tmp_path, configfile=tmp_path / "c.yaml")
    assert result.returncode == 0, result.stderr
    assert "download_brats" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"split": {"train": 0.8, "val": 0.15, "test": 0.15}}, "data.preprocess.split"),
        ({"shape": [16, -16, 16]}, "-16 is less than the minimum"),
        ({"labels": "multiclass"}, "multiclass"),
    ],
)
def test_invalid_config_stops_before_any_job(tmp_path, change, message):
    configfile = write_config(tmp_path / "bad.yaml", **change)
    result = snakemake("--cores", "1", workdir=tmp_path, configfile=configfile)
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
    assert not (tmp_path / "results").exists()


def test_a_bad_quality_target_stops_the_workflow_naming_the_key(tmp_path):
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["report"]["quality_target"] = {"fraction_of_best": 1.5}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--quiet", "rules", workdir=tmp_path, configfile=tmp_path / "c.yaml")
    assert result.returncode != 0
    assert "On instance['report']['quality_target']" in result.stderr + result.stdout
    # A valid one reaches rule scaling as its params.
    config["report"]["quality_target"] = {"dice": 0.8}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--quiet", "rules", workdir=tmp_path, configfile=tmp_path / "c.yaml")
    assert result.returncode == 0, result.stderr


def test_lint_is_clean_but_for_the_justified_pythonpath_note(tmp_path):
    result = snakemake("--lint", workdir=ROOT)
    findings = [
        line.strip()
        for line in (result.stdout + result.stderr).splitlines()
        if line.startswith("    * ")
    ]
    assert len(findings) == 1, findings
    assert findings[0].startswith("* Environment variable PYTHONPATH used but not asserted"), (
        findings
    )


@pytest.mark.slow
def test_pipeline_runs_offline_and_reruns_nothing(tmp_path):
    configfile = write_config(tmp_path / "config.yaml")
    result = snakemake("--cores", "2", workdir=tmp_path, configfile=configfile)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((tmp_path / "results/tfrecords/info.json").read_text())
    assert sum(split["count"] for split in info["splits"].values()) == 10
    for mode in ("data", "experiment"):
        for gpus in (1, 2):
            run = tmp_path / f"results/train/tensorflow/{mode}/{gpus}gpu"
            # Read through the run folder's contract, as every later stage reads them.
            summary = RunSummary.read(run / "summary.json")
            assert (summary.backend, summary.mode) == ("tensorflow", mode)
            assert (summary.gpus, summary.ok_count) == (gpus, 1)
            assert (summary.train_volumes, summary.val_volumes) == (
                info["splits"]["train"]["count"],
                info["splits"]["val"]["count"],
            )
            assert not (run / "calibration.json").exists()  # the planner measures runs itself
            # The model card names the weights beside it.
            card = ModelCard.read(run / "best_model.json")
            assert card.backend == "tensorflow"
            assert Path(card.model_file).name == "best_model.keras"
            assert card.model_path(run / "best_model.json").is_file()
    figures = tmp_path / "results/plot_scaling"
    assert (figures / "speedup.png").stat().st_size > 0
    assert (figures / "timeline_tensorflow_experiment_2gpu.png").stat().st_size > 0
    for mode in ("data", "experiment"):
        evaluated = json.loads(
            (tmp_path / f"results/evaluate/tensorflow/{mode}/summary.json").read_text()
        )
        assert evaluated["cases"] > 0
    report = snakemake(
        "--cores", "2", "--report", "report.html", workdir=tmp_path, configfile=configfile
    )
    assert report.returncode == 0, report.stderr[-2000:]
    assert "speedup.png" in (tmp_path / "report.html").read_text(errors="replace")
    assert "synthetic" in (tmp_path / "logs/synthesize_brats.log").read_text()
    assert (tmp_path / "logs/plan_tfrecords.log").exists()
    assert (tmp_path / "logs/train_data_parallel/tensorflow/1gpu.log").exists()
    again = snakemake("-n", "--cores", "2", workdir=tmp_path, configfile=configfile)
    assert "Nothing to be done" in again.stdout + again.stderr
    # Redrawing the figures retrains nothing.
    redraw = snakemake(
        "-n",
        "--cores",
        "2",
        "--forcerun",
        "plot_scaling",
        "--quiet",
        "rules",
        workdir=tmp_path,
        configfile=configfile,
    )
    jobs = redraw.stdout + redraw.stderr
    assert "plot_scaling" in jobs and "train_" not in jobs and "convert_tfrecords" not in jobs
    shutil.rmtree(tmp_path / "results")


@pytest.mark.slow
def test_torch_backend_demo_runs_end_to_end_without_tensorflow(tmp_path):
    config = yaml.safe_load(write_config(tmp_path / "config.yaml").read_text())
    demo_grid = yaml.safe_load((ROOT / "config.yaml").read_text())["train"]["search_space"]
    # The demo grid (two learning rates), two epochs: enough for Dice to leave zero.
    config["train"].update(backend="torch", epochs=2, search_space=demo_grid)
    # Fixed shard counts: with `auto` a larger G below would change them, and so reconvert
    # the data and retrain everything (README "Configuration").
    config["data"]["preprocess"]["shards"] = {"train": 2, "val": 2, "test": 1}
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    trial_count = len(demo_grid["lr"])
    assert trial_count == 2

    result = snakemake("--cores", "2", workdir=tmp_path, configfile=configfile)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "results/train/tensorflow").exists()
    for mode in ("data", "experiment"):
        for gpus in (1, 2):
            run = tmp_path / f"results/train/torch/{mode}/{gpus}gpu"
            summary = RunSummary.read(run / "summary.json")
            assert (summary.backend, summary.mode, summary.gpus) == ("torch", mode, gpus)
            assert summary.ok_count == summary.trial_count == trial_count
            assert 0 < summary.best.val_dice <= 1
            trials = read_trials(run / "trials.csv")
            assert [trial.status for trial in trials] == ["ok"] * trial_count
            assert all(0 <= trial.val_dice <= 1 for trial in trials)
            card = ModelCard.read(run / "best_model.json")
            assert (card.backend, card.model_file) == ("torch", "best_model.pt")
            assert (run / "best_model.pt").stat().st_size > 0
            # Data parallelism: G ranks per trial; experiment parallelism: one per trial.
            workers = [w for t in trials for w in read_workers(run / "trials" / t.trial_id)]
            assert len(workers) == trial_count * (gpus if mode == "data" else 1)
            for worker in workers:
                assert worker.backend == "torch"
                assert worker.frameworks_loaded == ("torch",), worker  # never TensorFlow
        evaluated = json.loads(
            (tmp_path / f"results/evaluate/torch/{mode}/summary.json").read_text()
        )
        assert evaluated["backend"] == "torch"
        assert Path(evaluated["model"]) == Path(f"results/train/torch/{mode}/2gpu/best_model.pt")
        assert evaluated["cases"] > 0
        assert (tmp_path / f"results/evaluate/torch/{mode}/metrics.csv").stat().st_size > 0
    with (tmp_path / "results/scaling/scaling.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    # The demo's hybrid k = 2 runs at G = 2 only: two trials, each over two ranks.
    assert sorted((row["backend"], row["mode"], row["gpus"]) for row in rows) == sorted(
        [("torch", mode, gpus) for mode in ("data", "experiment") for gpus in ("1", "2")]
        + [("torch", "hybrid2", "2")]
    )
    # The planner, calibrated on these very runs, predicts each within its tolerance.
    with (tmp_path / "results/plan/plan.csv").open() as handle:
        plan = list(csv.DictReader(handle))
    errors = {
        (row["mode"], row["gpus_per_trial"], row["gpus"]): float(row["relative_error"])
        for row in plan
        if row["study"] == "measured" and row["measured_makespan_seconds"]
    }
    assert set(errors) == {
        ("data", "1", "1"),
        ("data", "2", "2"),
        ("experiment", "1", "1"),
        ("experiment", "1", "2"),
        ("hybrid", "2", "2"),
    }
    assert all(abs(error) <= PLAN_TOLERANCE for error in errors.values()), errors
    # ... and projects the paper's grid onto H200s, every mode up to G = 32.
    projected = {(r["mode"], int(r["gpus"])) for r in plan if r["study"] == "projected"}
    assert {("data", 32), ("experiment", 32), ("hybrid", 32)} <= projected
    assert (tmp_path / "results/plan/plan.png").stat().st_size > 0
    hybrid = tmp_path / "results/train/torch/hybrid2/2gpu"
    assert len(list(hybrid.glob("trials/*/workers/rank*.json"))) == trial_count * 2
    assert RunSummary.read(hybrid / "summary.json").gpus_per_trial == 2
    figures = tmp_path / "results/plot_scaling"
    for name in ("speedup", "efficiency", "makespan", "quality"):
        assert (figures / f"{name}.png").stat().st_size > 0
    timelines = {path.name for path in figures.glob("timeline_*.png")}
    assert timelines == {
        f"timeline_torch_{mode}_{gpus}gpu.png" for mode in ("data", "experiment") for gpus in (1, 2)
    } | {"timeline_torch_hybrid2_2gpu.png"}
    report = snakemake(
        "--cores", "2", "--report", "report.html", workdir=tmp_path, configfile=configfile
    )
    assert report.returncode == 0, report.stderr[-2000:]
    html = (tmp_path / "report.html").read_text(errors="replace")
    assert "timeline_torch_data_2gpu.png" in html and "plan.png" in html

    # Adding a backend (and a G) schedules that backend's jobs only: the torch runs are kept.
    config["train"].update(backend=["tensorflow", "torch"], gpu_counts=[1, 2, 4])
    configfile.write_text(yaml.safe_dump(config))
    dry = snakemake("--cores", "2", "-n", workdir=tmp_path, configfile=configfile)
    assert dry.returncode == 0, dry.stderr[-2000:]
    trained = {
        (job["wildcards"]["backend"], job["rule"], job["wildcards"]["gpus"])
        for job in dry_run_jobs(dry.stdout)
        if job["rule"].startswith("train_")
    }
    assert trained == {
        (backend, rule, gpus)
        for rule in ("train_data_parallel", "train_experiment_parallel")
        for backend, gpu_counts in (("tensorflow", ("1", "2", "4")), ("torch", ("4",)))
        for gpus in gpu_counts
    } | {  # hybrid k = 2 wherever 2 divides G
        (backend, "train_hybrid_parallel", gpus)
        for backend, gpu_counts in (("tensorflow", ("2", "4")), ("torch", ("4",)))
        for gpus in gpu_counts
    }
    shutil.rmtree(tmp_path / "results")


def profile_dry_run(tmp_path: Path, config: dict) -> subprocess.CompletedProcess:
    """``config`` through the real profile, as a cluster user runs it (-n: nothing is
    submitted); asserts it plans."""
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(
        "-n",
        "--forceall",
        "--profile",
        str(ROOT / "profiles/slurm"),
        # No conda on the test machine, which the profile's env deployment checks for;
        # env-modules stands in (no rule uses modules): the resources are what is tested.
        "--sdm",
        "env-modules",
        workdir=tmp_path,
        configfile=tmp_path / "c.yaml",
    )
    assert result.returncode == 0, result.stderr
    return result


def test_paper_scale_jobs_request_nodes_and_gpus(tmp_path):
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["train"].update(
        gpu_counts=[1, 2, 4, 8, 16, 32], use_gpu=True, gpus_per_node=4, cpus_per_worker=10
    )
    result = profile_dry_run(tmp_path, config)
    requested = {
        (job["rule"], int(job["wildcards"]["gpus"])): tuple(
            job["resources"][key] for key in ("nodes", "tasks", "gres", "cpus_per_task")
        )
        for job in dry_run_jobs(result.stdout + result.stderr)
        if job["rule"].startswith("train_")
    }
    expected = {
        1: ("1", "1", "gpu:1", "10"),
        2: ("1", "1", "gpu:2", "20"),
        4: ("1", "1", "gpu:4", "40"),
        8: ("2", "2", "gpu:4", "40"),
        16: ("4", "4", "gpu:4", "40"),
        32: ("8", "8", "gpu:4", "40"),
    }
    for rule in ("train_data_parallel", "train_experiment_parallel"):
        assert {g: requested[(rule, g)] for g in expected} == expected
    # The GPU preflight runs first, on one node holding as many GPUs as a training job's node.
    (preflight,) = [
        j for j in dry_run_jobs(result.stdout + result.stderr) if j["rule"] == "preflight"
    ]
    assert preflight["output"] == ["results/preflight/tensorflow.json"]
    assert tuple(preflight["resources"][k] for k in ("nodes", "tasks", "gres")) == (
        "1",
        "1",
        "gpu:4",
    )


PAPER_TRAIN = {
    "backend": ["tensorflow", "torch"],
    "modes": ["data", "experiment", "hybrid"],
    "gpus_per_trial": [2, 4],
    "gpu_counts": [1, 2, 4, 8, 16, 32],
    "use_gpu": True,
    "gpus_per_node": 4,
    "cpus_per_worker": 8,
}


@pytest.mark.parametrize(
    ("variant", "with_info_json"),
    [({}, True), ({"image_dtype": "float16", "cache": False}, False)],
    ids=["float32-cached-info.json", "float16-streaming-before-conversion"],
)
def test_paper_scale_jobs_ask_the_memory_their_nodes_hold(tmp_path, variant, with_info_json):
    """The paper's study through the real profile (-n): every training job's nodes, tasks,
    GRES, CPUs and memory per node, against the job shape and distmis.cluster.memory; sized
    from info.json once the conversion has run, from the config before."""
    from distmis.cluster.memory import SplitSizes, training_memory
    from distmis.cluster.resources import job_shape
    from tests.cluster.test_memory import write_info

    dtype = variant.get("image_dtype", "float32")
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["data"].update(source="msd")
    config["data"]["preprocess"].update(shape=[240, 240, 152], image_dtype=dtype)
    config["train"].update(PAPER_TRAIN, cache=variant.get("cache", True))
    info = tmp_path / "results/tfrecords/info.json"
    if with_info_json:
        write_info(info.parent, {"train": 339, "val": 73, "test": 72}, dtype=dtype)
    result = profile_dry_run(tmp_path, config)
    validated = load_config(tmp_path / "c.yaml")
    sizes = SplitSizes.from_info(info) if with_info_json else SplitSizes.from_config(validated)
    assert sizes.cached_bytes() / 1e9 == pytest.approx(
        61.3 if dtype == "float32" else 32.5, abs=0.1
    )
    jobs = [
        j for j in dry_run_jobs(result.stdout + result.stderr) if j["rule"].startswith("train_")
    ]
    # (data + experiment) × 6 G + hybrid2 at 5 G + hybrid4 at 4 G, × 2 backends
    assert len(jobs) == 2 * (2 * 6 + 5 + 4)
    for job in jobs:
        wildcards, resources = job["wildcards"], job["resources"]
        gpus, mode = int(wildcards["gpus"]), job["rule"].split("_")[1]
        k = int(wildcards["k"]) if mode == "hybrid" else None
        shape = job_shape(gpus, 4, 8, True)
        expected = training_memory(
            wildcards["backend"], mode, gpus, k, validated["train"], sizes
        ).mem_mb
        assert (
            resources["nodes"],
            resources["tasks"],
            resources["gres"],
            resources["cpus_per_task"],
            resources["mem_mb"],
        ) == (
            str(shape.nodes),
            str(shape.nodes),
            f"gpu:{shape.gpus_per_node}",
            str(shape.cpus_per_node),
            str(expected),
        ), job
        # A cached node holds the whole copy: never less than the README's "Sizing a node".
        if variant.get("cache", True):
            assert int(resources["mem_mb"]) * 2**20 > 61.3e9
    converting = [
        j for j in dry_run_jobs(result.stdout + result.stderr) if j["rule"] == "convert_tfrecords"
    ]
    assert converting and all(1000 > int(j["resources"]["mem_mb"]) > 900 for j in converting)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backend", "framework"), [("tensorflow", "TensorFlow"), ("torch", "PyTorch")]
)
def test_use_gpu_without_a_gpu_fails_at_the_preflight_before_any_training_job(
    tmp_path, backend, framework
):
    config = write_config(tmp_path / "c.yaml")
    settings = yaml.safe_load(config.read_text())
    settings["train"].update(use_gpu=True, backend=backend)
    config.write_text(yaml.safe_dump(settings))
    result = snakemake("--cores", "2", workdir=tmp_path, configfile=config)
    assert result.returncode != 0
    prefix = f"preflight {backend}: error: "
    (line,) = [x for x in result.stderr.splitlines() if x.startswith(prefix)]
    assert "GPU check failed on" in line and framework in line and "fix: " in line
    # No training job started (Snakemake prints "rule <name>:" as it starts one).
    assert not re.search(r"^rule train_", result.stderr, re.MULTILINE), result.stderr[-3000:]
    assert not (tmp_path / "results/train").exists()
    assert not (tmp_path / f"results/preflight/{backend}.json").exists()


# --- the rule adapters: distmis.workflow -------------------------------------------------

RULE_HEADER = re.compile(r"^rule (\w+):\n", re.MULTILINE)
DIRECTIVE = re.compile(r"^    (\w+):", re.MULTILINE)
SCRIPT = re.compile(r"^    script:\n\s+\"([^\"]+)\"", re.MULTILINE)


def rule_scripts(rules_dir: Path) -> dict[str, str | None]:
    """Each rule in ``rules_dir/*.smk`` → the script it names (relative to its .smk), or None
    when it runs anything else (shell:, run:, a wrapper, or a second script)."""
    found: dict[str, str | None] = {}
    for smk in sorted(rules_dir.glob("*.smk")):
        text = smk.read_text()
        headers = list(RULE_HEADER.finditer(text))
        for i, header in enumerate(headers):
            body = text[header.end() : headers[i + 1].start() if i + 1 < len(headers) else None]
            # The rule ends at the first line back at column 0 that is not blank or a comment.
            end = re.search(r"^[^\s#]", body, re.MULTILINE)
            body = body[: end.start()] if end else body
            directives = DIRECTIVE.findall(body)
            runs = [d for d in directives if d in ("script", "shell", "run", "wrapper", "notebook")]
            scripts = SCRIPT.findall(body)
            found[header.group(1)] = scripts[0] if runs == ["script"] and scripts else None
    return found


def script_call(path: Path) -> str | None:
    """The function a workflow script calls, when it is exactly a docstring,
    ``from distmis.workflow import f`` and ``f(snakemake)``; else None."""
    body = ast.parse(path.read_text()).body
    if len(body) != 3:
        return None
    doc, imported, call = body
    if not (isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)):
        return None
    if not (
        isinstance(imported, ast.ImportFrom)
        and imported.module == "distmis.workflow"
        and len(imported.names) == 1
        and imported.names[0].asname is None
    ):
        return None
    name = imported.names[0].name
    expected = f"{name}(snakemake)"
    if not (isinstance(call, ast.Expr) and ast.unparse(call.value) == expected):
        return None
    return name


def adapter_names() -> set[str]:
    """The public functions of distmis.workflow that adapt a rule (all but start_script)."""
    return {
        name
        for name, value in vars(workflow).items()
        if inspect.isfunction(value)
        and value.__module__ == workflow.__name__
        and not name.startswith("_")
        and name != "start_script"
    }


def test_every_rule_calls_the_same_named_script_and_function():
    rules = rule_scripts(ROOT / "rules")
    # Every rule of the pipeline, so a rule the parser missed cannot pass unseen.
    assert set(rules) == {
        "synthesize_brats",
        "download_brats",
        "plan_tfrecords",
        "convert_tfrecords",
        "index_tfrecords",
        "preflight",
        "train_data_parallel",
        "train_experiment_parallel",
        "train_hybrid_parallel",
        "evaluate",
        "scaling",
        "plot_scaling",
        "plan",
    }
    assert {rule: script for rule, script in rules.items()} == {
        rule: f"../workflow_scripts/{rule}.py" for rule in rules
    }
    # A training rule's script calls the one training adapter, which asks the registry for
    # the rule's mode; every other rule's script calls the adapter named as the rule.
    training = {mode.rule for mode in modes.MODES.values()}
    adapter = {rule: "train" if rule in training else rule for rule in rules}
    scripts = {path.stem: script_call(path) for path in (ROOT / "workflow_scripts").glob("*.py")}
    assert scripts == adapter  # no script without its rule either
    assert adapter_names() == set(adapter.values())
    for name in adapter.values():
        assert list(inspect.signature(getattr(workflow, name)).parameters) == ["snakemake"]


def test_the_rule_and_script_checks_catch_a_mismatch(tmp_path: Path):
    (tmp_path / "x.smk").write_text(
        "rule fine:\n"
        "    output:\n"
        '        "a",\n'
        "    script:\n"
        '        "../workflow_scripts/fine.py"\n'
        "\n\n"
        "# between rules\n"
        "rule inline:\n"
        "    output:\n"
        '        "b",\n'
        "    shell:\n"
        '        "touch {output}"\n'
    )
    assert rule_scripts(tmp_path) == {"fine": "../workflow_scripts/fine.py", "inline": None}
    good = tmp_path / "good.py"
    good.write_text('"""Doc."""\n\nfrom distmis.workflow import good\n\ngood(snakemake)\n')
    assert script_call(good) == "good"
    for wrong in (
        '"""Doc."""\n\nfrom distmis.workflow import other\n\ngood(snakemake)\n',
        '"""Doc."""\n\nfrom distmis.other import good\n\ngood(snakemake)\n',
        '"""Doc."""\n\nfrom distmis.workflow import good\n\ngood(snakemake, 1)\n',
        '"""Doc."""\n\nfrom distmis.workflow import good\n\nx = 1\ngood(snakemake)\n',
    ):
        good.write_text(wrong)
        assert script_call(good) is None, wrong


def test_the_adapters_import_no_framework_until_called():
    # A torch job must never load TensorFlow, and the plotting env has neither nor Ray.
    code = (
        "import sys, distmis.workflow, distmis.scaling.plot, distmis.scaling.run; "
        "print(sorted(m for m in ('tensorflow', 'torch', 'ray') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.fixture
def rule_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The log a rule adapter writes to; stderr and the root logger are restored afterwards."""
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield tmp_path / "rule.log"
    if sys.stderr is not sys.__stderr__ and getattr(sys.stderr, "name", "") == str(
        tmp_path / "rule.log"
    ):
        sys.stderr.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_start_script_sends_stderr_and_logging_to_the_log(rule_log: Path):
    workflow.start_script(SimpleNamespace(log=[str(rule_log)]))
    print("a traceback", file=sys.stderr)
    logging.getLogger("distmis.test").info("a log line")
    text = rule_log.read_text()
    assert "a traceback" in text
    assert "INFO distmis.test: a log line" in text


def train_rule(
    tmp_path: Path,
    rule_log: Path,
    backend: str = "torch",
    gpus: int = 2,
    rule: str = "train_experiment_parallel",
):
    from tests.cluster.test_memory import write_info

    train = load_config(None)["train"]
    write_info(tmp_path / "tfrecords", {"train": 17, "val": 4, "test": 3}, shape=(32, 32, 24))
    return SimpleNamespace(
        input=SimpleNamespace(info=str(tmp_path / "tfrecords" / "info.json")),
        params=SimpleNamespace(train=train, out=str(tmp_path / "out")),
        wildcards=SimpleNamespace(backend=backend, gpus=str(gpus)),
        log=[str(rule_log)],
        rule=rule,
    )


def test_training_rules_run_in_process_outside_slurm(tmp_path, rule_log, monkeypatch):
    import distmis.train.run

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ran = []
    monkeypatch.setattr(distmis.train.run, "run_training", lambda s: ran.append(s) or {"ok": 1})
    assert workflow.train(train_rule(tmp_path, rule_log)) == {"ok": 1}
    (settings,) = ran
    assert (settings.mode, settings.gpus, settings.backend) == ("experiment", 2, "torch")
    assert (settings.tfrecord_dir, settings.out_dir) == (tmp_path / "tfrecords", tmp_path / "out")
    # The job's memory request, as its formula adds it up, opens its log.
    assert "memory train torch experiment G=2 (info.json): mem_mb " in rule_log.read_text()


def test_training_rules_relaunch_under_the_jobs_ray_cluster_in_slurm(
    tmp_path, rule_log, monkeypatch
):
    import distmis.cluster.ray_cluster as ray_cluster

    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    launched = []

    def fake_launcher(command, *, cpus_per_node, gpus_per_node, cache_dir):
        assert cache_dir is None  # the schema default: the node cache picks its root
        launched.append((command, cpus_per_node, gpus_per_node))
        return status

    monkeypatch.setattr(ray_cluster, "run_with_ray_cluster", fake_launcher)
    status = 0
    rule = train_rule(tmp_path, rule_log, backend="tensorflow", gpus=2, rule="train_data_parallel")
    assert workflow.train(rule) is None
    ((command, cpus_per_node, gpus_per_node),) = launched
    out = tmp_path / "out"
    assert command[1:] == [
        "-m",
        "distmis.cli",
        "train",
        "--mode",
        "data",
        "--backend",
        "tensorflow",
        "--gpus",
        "2",
        "--data",
        str(tmp_path / "tfrecords"),
        "--out",
        str(out),
        "--config",
        str(out / "train_config.yaml"),
    ]
    train = rule.params.train
    assert yaml.safe_load((out / "train_config.yaml").read_text()) == {"train": dict(train)}
    assert (cpus_per_node, gpus_per_node) == (
        2 * train["cpus_per_worker"],
        2 if train["use_gpu"] else 0,
    )
    status = 3
    with pytest.raises(ray_cluster.ClusterError, match="exited with status 3"):
        workflow.train(rule)


class Namedlist(list):
    """Stand-in for Snakemake's input/output objects: a list whose entries have names."""

    def __init__(self, **named: object) -> None:
        flat: list = []
        for value in named.values():
            flat.extend(value if isinstance(value, list) else [value])
        super().__init__(flat)
        self.__dict__.update(named)


def test_scaling_rules_write_declared_outputs(tmp_path: Path, rule_log: Path):
    results = make_results(tmp_path / "train")
    summaries = [
        str(results / backend / mode / f"{gpus}gpu" / "summary.json")
        for backend in BACKENDS
        for mode in MODES
        for gpus in (1, 2)  # the config asks for fewer runs than exist: only these count
    ]
    table = tmp_path / "results" / "scaling" / "scaling.csv"
    evals = [
        eval_summary(
            tmp_path / "results" / "evaluate" / backend / "data" / "summary.json",
            str(results / backend / "data" / "2gpu" / "best_model.json"),
            [dice],
        )
        for backend, dice in zip(BACKENDS, (0.6, 0.8), strict=True)
    ]
    workflow.scaling(
        SimpleNamespace(
            input=Namedlist(summaries=summaries, evals=[str(p) for p in evals]),
            output=Namedlist(table=str(table)),
            params=SimpleNamespace(
                quality_tolerance=0.01, quality_target={"fraction_of_best": 0.95}
            ),
            log=[str(rule_log)],
        )
    )
    assert f"wrote {table}" in rule_log.read_text()  # logging went to the rule's log
    rows = pd.read_csv(table).set_index(["backend", "mode", "gpus"])["test_dice"]
    assert rows.dropna().to_dict() == {("tensorflow", "data", 2): 0.6, ("torch", "data", 2): 0.8}
    figures = tmp_path / "results" / "plot_scaling"
    runs = sorted(timeline_names((1, 2)))
    # Named as rules/scaling.smk names them: PNGs by figure name, PDFs beside them.
    outputs: dict[str, object] = {}
    for name in ("speedup", "efficiency", "makespan", "quality", "time_to_target"):
        outputs[name] = str(figures / f"{name}.png")
        outputs[f"{name}_pdf"] = str(figures / f"{name}.pdf")
    outputs["timelines"] = [str(figures / f"{r}.png") for r in runs]
    outputs["timelines_pdf"] = [str(figures / f"{r}.pdf") for r in runs]
    rule = SimpleNamespace(
        input=Namedlist(table=str(table), summaries=summaries),
        output=Namedlist(**outputs),
        params=SimpleNamespace(references=REFERENCES, quality_tolerance=0.01),
        log=[str(rule_log)],
    )
    workflow.plot_scaling(rule)
    assert {p.name for p in figures.iterdir()} == {Path(p).name for p in rule.output}
    # A run the rule does not declare a timeline for is refused before anything is drawn.
    outputs["timelines"] = outputs["timelines"][1:]
    rule.output = Namedlist(**outputs)
    with pytest.raises(ValueError, match="undeclared outputs"):
        workflow.plot_scaling(rule)


# --- a bad case through the real workflow -----------------------------------------------


def break_case(task: Path, kind: str) -> str:
    """Damage BRATS_002 of ``task`` in one way; the message fragment that names the problem."""
    import nibabel as nib
    import numpy as np

    image_path = task / "imagesTr" / "BRATS_002.nii.gz"
    label_path = task / "labelsTr" / "BRATS_002.nii.gz"
    image = nib.load(image_path).get_fdata(dtype=np.float32)
    if kind == "wrong channels":
        nib.save(nib.Nifti1Image(image[..., :3], np.eye(4)), image_path)
        return "expected 4 channels"
    if kind == "grid mismatch":
        nib.save(nib.Nifti1Image(np.zeros((10, 10, 10), np.uint8), np.eye(4)), label_path)
        return "label grid (10, 10, 10) differs from image grid (20, 18, 14)"
    if kind == "nan":
        image[3, 3, 3, 1] = np.nan
        image[4, 4, 4, 2] = np.inf
        nib.save(nib.Nifti1Image(image, np.eye(4)), image_path)
        return "2 NaN/inf voxels"
    raise AssertionError(kind)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["wrong channels", "grid mismatch", "nan"])
def test_a_bad_case_fails_its_conversion_job_with_one_clear_line(tmp_path, make_task, kind):
    import tarfile

    task = make_task(cases=10)
    problem = break_case(task, kind)
    archive = tmp_path / "Task01_BrainTumour.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(task, arcname=task.name)
    work = tmp_path / "work"
    work.mkdir()
    config = yaml.safe_load(write_config(work / "config.yaml").read_text())
    # A user's own copy of the MSD archive, unpacked by rule download_brats (no network).
    config["data"]["source"] = "msd"
    config["data"]["download"].update(archive=str(archive), md5=None)
    (work / "config.yaml").write_text(yaml.safe_dump(config))

    result = snakemake(
        "--cores", "2", "results/tfrecords/info.json", workdir=work, configfile=work / "config.yaml"
    )
    assert result.returncode != 0
    plan = json.loads((work / "results/tfrecords/plan.json").read_text())
    (shard,) = [
        entry["file"]
        for entries in plan["shards"].values()
        for entry in entries
        if any(case["case_id"] == "BRATS_002" for case in entry["cases"])
    ]
    log = (work / f"logs/convert_tfrecords/{shard}.log").read_text()
    expected = re.compile(f"case BRATS_002: .*{re.escape(problem)}")
    lines = [line for line in log.splitlines() if expected.search(line)]
    assert len(lines) == 1, log
    assert "BrokenProcessPool" not in log and "Traceback" not in log, log
    # Snakemake's own report of the failure shows the same line, beside the log's path.
    output = result.stdout + result.stderr
    shown = [line for line in output.splitlines() if expected.search(line)]
    assert len(shown) == 1 and lines[0].endswith(shown[0]), output[-3000:]
    assert shown[0].startswith(f"convert_tfrecords {shard}: error: case BRATS_002: ")
    assert "skip_bad_cases" in shown[0]
    assert f"logs/convert_tfrecords/{shard}.log" in output
    # Nothing of the failed job is left: no shard, no manifest, no temporary file.
    tfrecords = work / "results/tfrecords"
    left = sorted(str(p.relative_to(tfrecords)) for p in tfrecords.rglob("*") if p.is_file())
    assert shard not in left and f"manifests/{shard}.json" not in left, left
    assert not [name for name in left if name.startswith(".") or "/." in name], left
    assert "info.json" not in left
