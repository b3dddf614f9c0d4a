"""Against a real SLURM (tests/slurm/start_slurm.sh; .ci/run starts it): the demo pipeline
through `snakemake --profile profiles/slurm`, the Ray launcher inside jobs, and scancel."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from distmis.plan.run import TOLERANCE as PLAN_TOLERANCE
from distmis.train.trials import TRIAL_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def slurm_is_up() -> bool:
    if not shutil.which("sinfo"):
        return False
    result = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    return result.returncode == 0 and any(s in result.stdout for s in ("idle", "mix", "alloc"))


# CI sets DISTMIS_REQUIRE_SLURM=1 after starting SLURM, so a broken set-up fails, not skips.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not slurm_is_up() and os.environ.get("DISTMIS_REQUIRE_SLURM") != "1",
        reason="no SLURM here (run tests/slurm/start_slurm.sh)",
    ),
]


def env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def scontrol_job(job_id: str) -> str:
    return subprocess.run(
        ["scontrol", "show", "job", job_id], capture_output=True, text=True
    ).stdout


def run_through_profile(tmp_path: Path, train: dict, *extra: str) -> subprocess.CompletedProcess:
    """The demo pipeline on tiny data through profiles/slurm (test-only overrides: the real
    partition, no conda, which the test machine lacks; squeue for job status).

    The workers are CPU workers: SLURM's GPUs here are fake (empty device files), and a
    use_gpu run stops at its GPU preflight (test_a_gpu_job_gets_its_gpus_and_stops_at_the_preflight
    checks what SLURM gives a GPU job)."""
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    profile.pop("software-deployment-method")
    profile["default-resources"]["slurm_partition"] = "debug"
    (tmp_path / "profile").mkdir()
    (tmp_path / "profile/config.yaml").write_text(yaml.safe_dump(profile))
    config = {
        "data": {
            "synthetic": {"cases": 10, "shape": [20, 20, 18]},
            "preprocess": {"shape": [16, 16, 16]},
        },
        "train": {"use_gpu": False, "epochs": 1, **train},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    command = [
        str(BIN / "snakemake"),
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--configfile",
        str(tmp_path / "config.yaml"),
        "--profile",
        str(tmp_path / "profile"),
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "1",
        *extra,
    ]
    return subprocess.run(
        command, capture_output=True, text=True, env=env(), cwd=tmp_path, timeout=1500
    )


def test_demo_pipeline_through_the_slurm_profile(tmp_path):
    one_config = {"lr": [0.005], "norm": ["batch"], "beta_2": [0.999], "amsgrad": [False]}
    result = run_through_profile(
        tmp_path,
        {"gpus_per_node": 4, "gpu_counts": [1, 2], "search_space": one_config},
        "--slurm-keep-successful-logs",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    submitted = re.findall(
        r"has been submitted with SLURM jobid (\d+)", result.stdout + result.stderr
    )
    assert len(submitted) >= 10  # everything but the local rules went through sbatch

    for mode in ("data", "experiment"):
        for gpus in (1, 2):
            run = tmp_path / f"results/train/tensorflow/{mode}/{gpus}gpu"
            summary = json.loads((run / "summary.json").read_text())
            slurm = summary["resources"]["slurm"]
            # The job really ran under SLURM, with G CPU workers' cores on one node ...
            assert slurm["SLURM_JOB_ID"] in submitted
            job = scontrol_job(slurm["SLURM_JOB_ID"])
            assert "NumNodes=1 " in job and f"NumCPUs={gpus} " in job and "gres:gpu" not in job
            # ... inside the job's own Ray cluster, its workers on the CPU as configured ...
            assert summary["resources"]["ray_cluster"]["CPU"] == gpus
            assert {d["device_type"] for d in summary["worker_devices"]} == {"cpu"}
            # ... and wrote the same contract as a local run.
            with (run / "trials.csv").open() as fh:
                rows = list(csv.DictReader(fh))
            assert tuple(rows[0]) == TRIAL_COLUMNS and rows[0]["status"] == "ok"
            assert (summary["backend"], summary["mode"]) == ("tensorflow", mode)
            assert (summary["gpus"], summary["ok_count"]) == (gpus, 1)
    assert (tmp_path / "results/scaling/scaling.csv").is_file()
    assert not leftover_ray_processes("")


def test_a_gpu_job_gets_its_gpus_and_stops_at_the_preflight(tmp_path):
    """With use_gpu, the backend's preflight runs on a node of the training jobs' shape (gres
    gpu:2). SLURM's GPUs here are empty files, so TensorFlow sees none and the job fails in one
    line (tests/test_workflow.py checks that no training job starts after it)."""
    result = run_through_profile(
        tmp_path,
        {"use_gpu": True, "gpus_per_node": 4, "gpu_counts": [1, 2]},
        "results/preflight/tensorflow.json",
    )
    assert result.returncode != 0
    (job_id,) = re.findall(
        r"has been submitted with SLURM jobid (\d+)", result.stdout + result.stderr
    )
    job = scontrol_job(job_id)
    assert "NumNodes=1 " in job and "TresPerNode=gres:gpu:2" in job, job
    log = (tmp_path / "logs/preflight/tensorflow.log").read_text()
    # What the job was given: two GPUs on its node ...
    assert re.search(r"^SLURM_GPUS_ON_NODE   2$", log, re.MULTILINE), log[-3000:]
    # ... and what TensorFlow made of them, in one line naming the host and the fix.
    (line,) = [x for x in log.splitlines() if "preflight tensorflow: error: " in x]
    assert "GPU check failed on " in line and "TensorFlow" in line and "fix: " in line
    assert not (tmp_path / "results/train").exists()
    assert not (tmp_path / "results/preflight/tensorflow.json").exists()


def test_ray_gives_each_gpu_worker_its_own_gpu_of_the_job(tmp_path):
    """Inside a job of gres gpu:2, the launcher's Ray cluster has 2 GPUs and a task asking
    for one sees exactly one of the job's (SLURM numbers them 0 and 1)."""
    program = (
        "import os, ray; ray.init(); "
        "f = ray.remote(num_gpus=1)(lambda: os.environ['CUDA_VISIBLE_DEVICES']); "
        "print('GPUs', ray.cluster_resources()['GPU'], 'seen', sorted(ray.get([f.remote(), f.remote()])))"
    )
    job_id = sbatch(
        tmp_path,
        f'{sys.executable} -m distmis.cli ray-cluster --cpus-per-node 2 --gpus-per-node 2 -- {sys.executable} -c "{program}"',
        cpus_per_task="2",
        gres="gpu:2",
    )
    wait_for(lambda: job_gone(job_id), 180, "the job to finish")
    output = (tmp_path / f"{job_id}.out").read_text()
    assert "GPUs 2.0 seen ['0', '1']" in output, output[-3000:]
    wait_for(lambda: not leftover_ray_processes(f"ray-job{job_id}"), 30, "Ray processes to exit")


def leftover_ray_processes(marker: str) -> list[str]:
    """Command lines of Ray processes still running (containing ``marker``)."""
    found = []
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            argv = (proc_dir / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        cmdline = " ".join(argv)
        # What the process is, not what its arguments mention: a `ps | grep raylet` of
        # someone else's on the same machine is not a Ray process.
        if (
            Path(argv[0]).name in {"raylet", "gcs_server"}
            or argv[0].startswith("ray::")
            or "distmis.cluster.ray_node" in argv[1:3]
        ) and marker in cmdline:
            found.append(cmdline[:200])
    return found


def sbatch(tmp_path: Path, command: str, **options: str) -> str:
    args = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    result = subprocess.run(
        ["sbatch", "--parsable", f"--output={tmp_path}/%j.out", *args, "--wrap", command],
        capture_output=True,
        text=True,
        env=env(),
        cwd=tmp_path,
        check=True,
    )
    return result.stdout.strip().split(";")[0]


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def job_gone(job_id: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True).stdout
    return job_id not in out


def test_launcher_runs_a_ray_program_across_the_allocation_and_cleans_up(tmp_path):
    program = "import ray; ray.init(); print('nodes', len(ray.nodes()), 'cpus', ray.cluster_resources()['CPU'])"
    job_id = sbatch(
        tmp_path,
        f'{sys.executable} -m distmis.cli ray-cluster --cpus-per-node 2 -- {sys.executable} -c "{program}"',
        cpus_per_task="2",
    )
    wait_for(lambda: job_gone(job_id), 180, "the job to finish")
    output = (tmp_path / f"{job_id}.out").read_text()
    assert "nodes 1 cpus 2.0" in output, output[-3000:]
    assert "all 1 nodes joined" in output
    assert "COMPLETED" in scontrol_job(job_id) or "JobState=COMPLETED" in scontrol_job(job_id)
    wait_for(lambda: not leftover_ray_processes(f"ray-job{job_id}"), 30, "Ray processes to exit")


def test_scancel_leaves_no_ray_process_behind(tmp_path):
    job_id = sbatch(
        tmp_path,
        f"{sys.executable} -m distmis.cli ray-cluster --cpus-per-node 1 -- sleep 600",
        cpus_per_task="1",
    )
    out = tmp_path / f"{job_id}.out"
    wait_for(lambda: out.is_file() and "running sleep 600" in out.read_text(), 180, "Ray to start")
    assert leftover_ray_processes(f"ray-job{job_id}"), "Ray was not running inside the job"
    subprocess.run(["scancel", job_id], check=True)
    wait_for(lambda: job_gone(job_id), 60, "the job to end")
    wait_for(
        lambda: not leftover_ray_processes(f"ray-job{job_id}"),
        30,
        f"Ray processes to exit: {leftover_ray_processes(f'ray-job{job_id}')}",
    )
    # No raylet/GCS of any job survives either (they name their session dir, not the job).
    wait_for(lambda: not leftover_ray_processes(""), 30, "all Ray processes to exit")


TWO_NODES = Path("/run/distmis-slurm/two_nodes").exists()


@pytest.mark.skipif(
    not TWO_NODES and os.environ.get("DISTMIS_REQUIRE_SLURM") != "1",
    reason="no 2-node SLURM here (tests/slurm/start_slurm.sh makes one in network namespaces)",
)
def test_two_node_jobs_span_both_nodes(tmp_path):
    assert TWO_NODES, "tests/slurm/start_slurm.sh could not make the 2-node cluster"
    two_configs = {"lr": [0.001, 0.005], "norm": ["batch"], "beta_2": [0.999], "amsgrad": [False]}
    # One worker per node: G = 2 needs both nodes of partition "twonode".
    result = run_through_profile(
        tmp_path,
        {"gpus_per_node": 1, "gpu_counts": [2], "search_space": two_configs},
        "--set-resources",
        "train_data_parallel:slurm_partition=twonode",
        "train_experiment_parallel:slurm_partition=twonode",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    for mode in ("data", "experiment"):
        run = tmp_path / f"results/train/tensorflow/{mode}/2gpu"
        summary = json.loads((run / "summary.json").read_text())
        job = scontrol_job(summary["resources"]["slurm"]["SLURM_JOB_ID"])
        assert "NumNodes=2 " in job and " NodeList=node[1-2]" in job, job
        # One Ray cluster over both nodes ...
        assert summary["resources"]["ray_cluster"]["CPU"] == 2
        assert summary["nodes_seen"] == ["node1", "node2"], summary["nodes_seen"]
        with (run / "trials.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        assert all(row["status"] == "ok" for row in rows), rows
        if mode == "experiment":
            # ... with the two trials placed on different nodes, one GPU each.
            assert sorted(row["node"] for row in rows) == ["node1", "node2"]
        else:
            # ... or both workers of each data-parallel trial, one per node.
            assert all(row["node"] == "node1;node2" for row in rows)
    # Rule plan, calibrated on these two-node runs, predicts both within its tolerance.
    with (tmp_path / "results/plan/plan.csv").open() as fh:
        errors = {
            row["mode"]: float(row["relative_error"])
            for row in csv.DictReader(fh)
            if row["study"] == "measured" and row["measured_makespan_seconds"]
        }
    assert set(errors) == {"data", "experiment"}
    assert all(abs(error) <= PLAN_TOLERANCE for error in errors.values()), errors
    assert not leftover_ray_processes("")


@pytest.mark.skipif(
    not TWO_NODES and os.environ.get("DISTMIS_REQUIRE_SLURM") != "1",
    reason="no 2-node SLURM here (tests/slurm/start_slurm.sh makes one in network namespaces)",
)
def test_torch_data_parallel_spans_two_nodes_with_gloo(tmp_path):
    """PyTorch DDP over the job's two nodes (Gloo over TCP between the node namespaces)."""
    assert TWO_NODES, "tests/slurm/start_slurm.sh could not make the 2-node cluster"
    one_config = {"lr": [0.005], "norm": ["batch"], "beta_2": [0.999], "amsgrad": [False]}
    # 2 CPU workers, one per node (gpus_per_node 1).
    result = run_through_profile(
        tmp_path,
        {
            "backend": "torch",
            "modes": ["data"],
            "gpus_per_node": 1,
            "gpu_counts": [2],
            "search_space": one_config,
        },
        "--set-resources",
        "train_data_parallel:slurm_partition=twonode",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    run = tmp_path / "results/train/torch/data/2gpu"
    summary = json.loads((run / "summary.json").read_text())
    job = scontrol_job(summary["resources"]["slurm"]["SLURM_JOB_ID"])
    assert "NumNodes=2 " in job and " NodeList=node[1-2]" in job, job
    assert summary["backend"] == "torch" and summary["nodes_seen"] == ["node1", "node2"]
    with (run / "trials.csv").open() as fh:
        (row,) = csv.DictReader(fh)
    assert row["status"] == "ok", row["error"]
    assert row["node"] == "node1;node2"
    workers = [json.loads(p.read_text()) for p in sorted(run.glob("trials/*/workers/rank*.json"))]
    assert sorted(w["host"] for w in workers) == ["node1", "node2"]
    # Both ranks trained on their own half: DDP kept them in step.
    assert all(w["train_volumes_read"] > 0 for w in workers), workers
    assert not leftover_ray_processes("")


@pytest.mark.skipif(
    not TWO_NODES and os.environ.get("DISTMIS_REQUIRE_SLURM") != "1",
    reason="no 2-node SLURM here (tests/slurm/start_slurm.sh makes one in network namespaces)",
)
def test_hybrid_trials_never_straddle_nodes(tmp_path):
    """Hybrid k = 2 on G = 4 over two nodes of 2 workers: each trial's two workers share a
    node (STRICT_PACK), so its all-reduce never crosses the network. The test nodes have one
    fake GPU each, too few for k = 2 GPUs per node, so the workers are CPU workers."""
    assert TWO_NODES, "tests/slurm/start_slurm.sh could not make the 2-node cluster"
    two_configs = {"lr": [0.001, 0.005], "norm": ["batch"], "beta_2": [0.999], "amsgrad": [False]}
    result = run_through_profile(
        tmp_path,
        {
            "backend": "torch",
            "modes": ["hybrid"],
            "gpus_per_trial": [2],
            "gpus_per_node": 2,
            "gpu_counts": [4],
            "search_space": two_configs,
        },
        "--set-resources",
        "train_hybrid_parallel:slurm_partition=twonode",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    run = tmp_path / "results/train/torch/hybrid2/4gpu"
    summary = json.loads((run / "summary.json").read_text())
    job = scontrol_job(summary["resources"]["slurm"]["SLURM_JOB_ID"])
    assert "NumNodes=2 " in job, job
    assert (summary["mode"], summary["gpus_per_trial"]) == ("hybrid", 2)
    assert summary["nodes_seen"] == ["node1", "node2"]
    with (run / "trials.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [row["status"] for row in rows] == ["ok", "ok"], rows
    # Each trial on one node (never "node1;node2"), both nodes used.
    assert sorted(row["node"] for row in rows) == ["node1", "node2"], rows
    assert not leftover_ray_processes("")
