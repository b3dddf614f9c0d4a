"""What a job asks its scheduler for in memory (:mod:`distmis.cluster.memory`): the formula's
parts at the paper's size and at the demo's, and the log line a job prints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distmis.cluster import memory
from distmis.cluster.memory import GB, MIB, SplitSizes, training_memory
from distmis.config import validate_config

PAPER_DATA = {"source": "msd", "preprocess": {"shape": [240, 240, 152]}}
PAPER_TRAIN = {"use_gpu": True, "gpus_per_node": 4, "cpus_per_worker": 8}


def paper_config(**train) -> dict:
    return validate_config({"data": PAPER_DATA, "train": {**PAPER_TRAIN, **train}})


def write_info(folder: Path, records: dict[str, int], dtype="float32", shape=(240, 240, 152)):
    """An info.json of the given sizes (no shards: nothing here reads them)."""
    folder.mkdir(parents=True, exist_ok=True)
    payload = {
        "image_shape": [*shape, 4],
        "label_shape": [*shape, 1],
        "image_dtype": dtype,
        "compression": "none",
        "label_channels": ["tumour"],
        "modalities": ["FLAIR", "T1w", "t1gd", "T2w"],
        "splits": {
            split: {"shards": [{"file": f"{split}.tfrecord", "records": n, "sha256": ""}]}
            for split, n in records.items()
        },
    }
    (folder / "info.json").write_text(json.dumps(payload))
    return folder / "info.json"


def test_the_config_expects_what_the_paper_converts():
    """Before the conversion: 484 MSD cases split 339 / 73 / 72, the copy the README's
    "Sizing a node" table gives (50.5 + 10.9 GB float32, 26.7 + 5.8 GB float16)."""
    sizes = SplitSizes.from_config(paper_config())
    assert dict(sizes.records) == {"train": 339, "val": 73, "test": 72}
    assert sizes.cached_bytes(("train",)) / GB == pytest.approx(50.46, abs=0.01)
    assert sizes.cached_bytes(("val",)) / GB == pytest.approx(10.87, abs=0.01)
    half = SplitSizes.from_config(
        validate_config(
            {
                "data": {
                    **PAPER_DATA,
                    "preprocess": {"shape": [240, 240, 152], "image_dtype": "float16"},
                }
            }
        )
    )
    assert half.cached_bytes(("train",)) / GB == pytest.approx(26.71, abs=0.01)
    assert half.cached_bytes(("val",)) / GB == pytest.approx(5.75, abs=0.01)


def test_info_json_is_read_exactly(tmp_path):
    info = write_info(
        tmp_path, {"train": 10, "val": 3, "test": 2}, dtype="float16", shape=(8, 8, 8)
    )
    sizes = SplitSizes.from_info(info)
    assert sizes.source == "info.json" and sizes.image_dtype == "float16"
    assert sizes.record_bytes == 8 * 8 * 8 * 4 * 2 + 8 * 8 * 8
    assert sizes.cached_bytes() == 13 * sizes.record_bytes


@pytest.mark.parametrize("backend", ["tensorflow", "torch"])
def test_a_cached_gpu_node_holds_the_copy_its_trials_and_ray(backend):
    train = paper_config(backend=backend)["train"]
    sizes = SplitSizes.from_config(paper_config())
    request = training_memory(backend, "experiment", 8, None, train, sizes)
    process = (
        memory.TRAINING_PROCESS_BASE[backend]
        + memory.CACHED_TRIAL[backend]
        - memory.FRAMEWORK_IMPORTS[backend]  # paper-size records: scale 1
        + memory.CUDA_HOST_ALLOWANCE
    )
    expected = memory.MARGIN * (
        sizes.cached_bytes()  # one copy per node, train + val
        + 4 * process  # G = 8 over 2 nodes: 4 trials per node
        + memory.RAY_DAEMONS
        + memory.RAY_SIDE_PROCESS[backend]  # the Tune driver
    )
    assert request.mem_mb == pytest.approx(expected / MIB, abs=1)
    # Far beyond the profile's flat 4000 MB, which the first training job would die of.
    assert request.mem_mb > 70_000


def test_float16_halves_the_copy_and_streaming_drops_it():
    cached = paper_config(backend="torch")
    sizes = SplitSizes.from_config(cached)
    full = training_memory("torch", "data", 4, None, cached["train"], sizes)
    half_sizes = SplitSizes(
        sizes.image_shape, sizes.label_shape, "float16", sizes.records, "config"
    )
    half = training_memory("torch", "data", 4, None, cached["train"], half_sizes)
    copy = dict(full.parts)["cached train + val"]
    # Images in half the bytes; the uint8 labels stay.
    assert dict(half.parts)["cached train + val"] == half_sizes.cached_bytes()
    assert 0.5 * copy < half_sizes.cached_bytes() < 0.55 * copy
    streaming = paper_config(backend="torch", cache=False)["train"]
    request = training_memory("torch", "data", 4, None, streaming, sizes)
    assert "cached train + val" not in dict(request.parts)
    # torch streams through cpus_per_worker - 1 = 7 DataLoader workers per process, each a
    # framework and a pipeline.
    pipeline = memory.pipeline_bytes("torch", False, sizes, 6)
    per_process = (
        memory.TRAINING_PROCESS_BASE["torch"]
        + pipeline
        + 7 * (memory.FRAMEWORK_IMPORTS["torch"] + pipeline)
        + memory.CUDA_HOST_ALLOWANCE
    )
    (processes,) = [size for name, size in request.parts if name.startswith("training processes")]
    assert processes == pytest.approx(4 * per_process)


def test_hybrid_counts_every_concurrent_trials_driver_and_controller():
    train = paper_config(backend="torch")["train"]
    sizes = SplitSizes.from_config(paper_config())
    hybrid = dict(training_memory("torch", "hybrid", 32, 2, train, sizes).parts)
    # The job's driver + 16 concurrent trials × (driver + Train controller).
    assert hybrid["Ray-side processes (33 × 0.41 GB)"] == pytest.approx(33 * 0.41 * GB)


def test_the_demo_asks_little(tmp_path):
    """The demo's splits are megabytes: its jobs ask a few GB at most, on CPU workers."""
    from distmis.config import load_config

    config = load_config(Path(__file__).resolve().parents[2] / "config.yaml")
    sizes = SplitSizes.from_config(config)
    for backend in ("tensorflow", "torch"):
        for mode, gpus, k in (("data", 2, None), ("experiment", 2, None), ("hybrid", 2, 2)):
            request = training_memory(backend, mode, gpus, k, config["train"], sizes)
            assert request.mem_mb < 6000, request.describe()
    assert memory.conversion_memory(config).mem_mb < 1100


def test_the_log_line_names_the_sum_an_override_and_slurms_limit():
    train = paper_config(backend="torch")["train"]
    sizes = SplitSizes.from_config(paper_config())
    request = training_memory("torch", "experiment", 4, None, train, sizes)
    line = request.describe(120000, "120000")
    assert line.startswith(f"train torch experiment G=4 (config): mem_mb {request.mem_mb} per node")
    assert "= 1.2 × (cached train + val 61.32 GB + training processes (4 × " in line
    assert "; this job asked mem_mb 120000 (an override" in line
    assert line.endswith("; SLURM's limit: 120000 MB per node")
    assert "override" not in request.describe(request.mem_mb)  # asked what the formula said


def test_the_rules_size_jobs_without_the_heavy_packages():
    """rules/common.smk sizes jobs at parse time in every rule's env, the plotting env too
    (numpy, pandas, matplotlib): nibabel, crc32c, SimpleITK, the frameworks and Ray must not be
    needed for it (CI's env test caught memory.py importing nibabel through prepare/msd.py)."""
    import subprocess
    import sys
    import textwrap

    program = textwrap.dedent(
        """
        import sys
        HEAVY = {"nibabel", "crc32c", "SimpleITK", "torch", "tensorflow", "ray"}

        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in HEAVY:
                    raise ImportError(f"{name} imported while sizing jobs")

        sys.meta_path.insert(0, Refuse())
        from distmis.cluster.memory import SplitSizes, conversion_memory, training_memory
        from distmis.config import validate_config, run_folders
        config = validate_config({"data": {"source": "msd"}, "train": {"use_gpu": True}})
        sizes = SplitSizes.from_config(config)
        print(conversion_memory(config).mem_mb, training_memory(
            "torch", "experiment", 4, None, config["train"], sizes).mem_mb)
        """
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    conversion, training = map(int, done.stdout.split())
    assert conversion > 0 and training > conversion
