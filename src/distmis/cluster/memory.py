"""The memory a job asks its scheduler for (``mem_mb``, per node), from the data and the config.

SLURM kills a job whose processes exceed ``--mem``, and it charges the job for the node cache
too: tmpfs pages (``/dev/shm``) count against the cgroup of the process that wrote them. A flat
default (the profile's 4000 MB) is killed by the first training job at the paper's size, where
one cached copy of the splits alone is ~61 GB (float32). So each job's request is the sum of
what its node holds, each part a measured figure scaled to the data's size:

    training node = margin × (cached copy of train + val     when train.cache
                              + training processes × (process + input pipeline
                                                      [+ CUDA allowance | + CPU step])
                              + Ray's daemons + the job's Ray-side processes)

Figures are bytes; a request is MiB, SLURM's unit for ``--mem``. Every constant names the
measurement it comes from (docs/explanation/input-memory.md "Sizing a node" and benchmarks/README.md); the one estimate that no
machine here could measure, the host memory of a CUDA context, says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distmis import modes
from distmis.cluster.resources import job_shape
from distmis.prepare.split import expected_split_counts
from distmis.prepare.task import EXPECTED_CHANNELS, LABEL_MODES, MSD_SCAN_SHAPE
from distmis.shards.info import decoded_record_bytes

MIB = 2**20
GB = 1e9

# Safety factor on every sum: allocator fragmentation, page cache of the shards being read
# (charged to the job, reclaimable only under pressure) and run-to-run variation.
MARGIN = 1.2

# The paper's stored volume; streaming figures below were measured at this size and scale
# with a record's bytes.
PAPER_IMAGE_SHAPE = (240, 240, 152, 4)
PAPER_LABEL_SHAPE = (240, 240, 152, 1)

# Peak RSS of one streaming input pipeline at the paper's size, framework imports included,
# batch 2, shuffle_buffer 6 (benchmarks/input_scale.py, 2026-12-03, benchmarks/README.md "Input pipelines at
# the paper's size"). Keyed by (backend, stored dtype).
STREAMING_PEAK = {
    ("tensorflow", "float32"): 3.69 * GB,
    ("tensorflow", "float16"): 3.00 * GB,
    ("torch", "float32"): 1.73 * GB,
    ("torch", "float16"): 1.04 * GB,
}
STREAMING_SHUFFLE_BUFFER = 6  # the buffer those peaks were measured with
# The framework after imports, inside those peaks (same benchmark).
FRAMEWORK_IMPORTS = {"tensorflow": 0.67 * GB, "torch": 0.24 * GB}
# Private memory a cached trial adds beside the node's shared copy: two-trial PSS minus the
# copy, halved (same benchmark, paper size; pipeline alone, framework included).
CACHED_TRIAL = {"tensorflow": 1.9 * GB, "torch": 0.35 * GB}
# Peak RSS of a training process on tiny data (its framework, Ray worker, built model and
# compiled step; no data to speak of): a trial of `distmis train --mode experiment` (Ray Tune)
# or a data-parallel worker (Ray Train), demo-size records, CPU; development VM, 2026-12-07.
TRAINING_PROCESS_BASE = {"tensorflow": 0.87 * GB, "torch": 0.54 * GB}
# Peak RSS of the job's Ray-side Python processes (its driver, a Train controller, a hybrid
# trial's driver): each imports the framework through Ray Train's backend (same runs).
RAY_SIDE_PROCESS = {"tensorflow": 0.93 * GB, "torch": 0.41 * GB}
# Host memory of a process's CUDA context and GPU libraries (cuDNN, cuBLAS, NCCL). NOT
# MEASURED: no GPU machine has been lent to this project's memory work. An allowance, to be
# replaced by the trainer's host peak RSS that benchmarks/gpu_loop.sh reports on a GPU.
CUDA_HOST_ALLOWANCE = 2.5 * GB
# CPU training (use_gpu: false): a training step's activations live in host memory. Bytes per
# voxel above the built model, batch 1, U-Net depth 3 with 8 base filters (benchmarks/
# step_memory.py, benchmarks/README.md "TensorFlow step memory"); activations scale with the batch and the
# filter count.
STEP_BYTES_PER_VOXEL = {"tensorflow": 490.0, "torch": 621.0}
STEP_BASE_FILTERS = 8
# Ray's daemons on a node (raylet, GCS, agents, one idle worker; PSS), measured on the
# development VM with Ray 2.60 (2026-12-07).
RAY_DAEMONS = 0.40 * GB

# Conversion: one shard per job, one case at a time. Peak RSS of a converter converting
# 240×240×155×4 float32 cases to 240×240×152 (benchmarks/convert.py, 2026-12-07), imports
# included; scaled with the source case's voxels above that.
CONVERT_PEAK = 0.83 * GB
CONVERT_SOURCE_VOXELS = 240 * 240 * 155 * 4


@dataclass(frozen=True)
class MemoryRequest:
    """A job's memory per node: named parts (bytes) and the margin over their sum."""

    what: str
    parts: tuple[tuple[str, float], ...]
    margin: float = MARGIN

    @property
    def bytes(self) -> float:
        return self.margin * sum(size for _, size in self.parts)

    @property
    def mem_mb(self) -> int:
        """The request in MiB (SLURM's ``--mem`` unit), rounded up."""
        return math.ceil(self.bytes / MIB)

    def describe(self, asked_mb: int | None = None, slurm_mb: str | None = None) -> str:
        """One line for the job's log: the request, the sum it comes from, what the job asked
        when an override changed it (``asked_mb``) and the limit SLURM set (``slurm_mb``)."""
        terms = " + ".join(f"{name} {size / GB:.2f} GB" for name, size in self.parts)
        line = f"{self.what}: mem_mb {self.mem_mb} per node = {self.margin} × ({terms})"
        if asked_mb is not None and int(asked_mb) != self.mem_mb:
            line += (
                f"; this job asked mem_mb {asked_mb} (an override: --set-resources or a profile)"
            )
        if slurm_mb:
            line += f"; SLURM's limit: {slurm_mb} MB per node"
        return line


@dataclass(frozen=True)
class SplitSizes:
    """What a training node caches: record shapes, stored dtype and records per split."""

    image_shape: tuple[int, ...]
    label_shape: tuple[int, ...]
    image_dtype: str
    records: Mapping[str, int]
    source: str  # "info.json" (exact) or "config" (before conversion: expected)

    @property
    def record_bytes(self) -> int:
        return decoded_record_bytes(self.image_shape, self.label_shape, self.image_dtype)

    def cached_bytes(self, splits=("train", "val")) -> int:
        return sum(self.records[split] for split in splits) * self.record_bytes

    @classmethod
    def from_info(cls, info_json: Path) -> SplitSizes:
        """The converted data's sizes (``info.json``, rule index_tfrecords)."""
        from distmis.shards.info import DatasetInfo

        info = DatasetInfo.from_dir(Path(info_json).parent)
        return cls(
            tuple(info.image_shape),
            tuple(info.label_shape),
            info.image_dtype,
            {split: info.count(split) for split in info.splits},
            "info.json",
        )

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SplitSizes:
        """What the conversion will write, before it has run: the dry run of a fresh checkout.
        A job is sized again from info.json when it is submitted."""

        preprocess = config["data"]["preprocess"]
        shape = tuple(preprocess["shape"])
        return cls(
            (*shape, EXPECTED_CHANNELS),
            (*shape, len(LABEL_MODES[preprocess["labels"]])),
            preprocess["image_dtype"],
            expected_split_counts(config),
            "config",
        )


def record_scale(sizes: SplitSizes) -> float:
    """A record's bytes relative to the paper's, in the same dtype: what the pipelines'
    measured buffers scale with."""
    paper_record = decoded_record_bytes(PAPER_IMAGE_SHAPE, PAPER_LABEL_SHAPE, sizes.image_dtype)
    return sizes.record_bytes / paper_record


def pipeline_bytes(backend: str, cache: bool, sizes: SplitSizes, shuffle_buffer: int) -> float:
    """One input pipeline's buffers above its framework: the measured figure at the paper's
    size scaled to these records, plus or minus a streaming shuffle buffer's records."""
    if cache:
        return (CACHED_TRIAL[backend] - FRAMEWORK_IMPORTS[backend]) * record_scale(sizes)
    measured = STREAMING_PEAK[(backend, sizes.image_dtype)] - FRAMEWORK_IMPORTS[backend]
    extra = (shuffle_buffer - STREAMING_SHUFFLE_BUFFER) * sizes.record_bytes
    return max(0.0, measured * record_scale(sizes) + extra)


def training_process_bytes(backend: str, train: Mapping[str, Any], sizes: SplitSizes) -> float:
    """One training process (a data-mode worker or a trial's worker) with its input pipeline
    and, for torch streaming, its DataLoader worker processes (each a framework and a
    pipeline); plus the CUDA allowance on a GPU, or the step's activations on the CPU."""
    pipeline = pipeline_bytes(backend, train["cache"], sizes, train["shuffle_buffer"])
    process = TRAINING_PROCESS_BASE[backend] + pipeline
    if backend == "torch" and not train["cache"]:
        loader_workers = train["torch"]["loader_workers"]
        if loader_workers is None:
            loader_workers = train["cpus_per_worker"] - 1
        process += loader_workers * (FRAMEWORK_IMPORTS[backend] + pipeline)
    if train["use_gpu"]:
        return process + CUDA_HOST_ALLOWANCE
    voxels = math.prod(sizes.image_shape[:3])
    filters = train["model"]["base_filters"] / STEP_BASE_FILTERS
    step = STEP_BYTES_PER_VOXEL[backend] * voxels * train["batch_size_per_replica"] * filters
    return process + step


def ray_side_processes(mode: str, gpus: int, gpus_per_trial: int | None) -> int:
    """Ray-side Python processes of a job besides its workers: its driver, and a Train
    controller (data), or each concurrent hybrid trial's driver and controller. Counted on
    every node: a hybrid trial's driver holds no CPU, so Ray may put them all on one."""
    spec = modes.get(mode)
    if spec.ray_train == "trial":
        return 1 + 2 * spec.trials_at_once(gpus, gpus_per_trial)
    if spec.ray_train == "grid":
        return 2
    return 1


def training_memory(
    backend: str,
    mode: str,
    gpus: int,
    gpus_per_trial: int | None,
    train: Mapping[str, Any],
    sizes: SplitSizes,
) -> MemoryRequest:
    """One node of a training job for G = ``gpus`` (every node asks the same: SLURM's
    ``--mem`` is per node), laid out by :func:`~distmis.cluster.resources.job_shape`.

    Every node caches the whole of train and val, in every mode (a data-parallel worker reads
    its share, but from the node's one copy of the split)."""
    shape = job_shape(gpus, train["gpus_per_node"], train["cpus_per_worker"], train["use_gpu"])
    process = training_process_bytes(backend, train, sizes)
    parts = []
    if train["cache"]:
        parts.append(("cached train + val", float(sizes.cached_bytes())))
    n = shape.workers_per_node
    parts.append((f"training processes ({n} × {process / GB:.2f} GB)", n * process))
    ray_side = ray_side_processes(mode, gpus, gpus_per_trial)
    parts.append(("Ray daemons", RAY_DAEMONS))
    per = RAY_SIDE_PROCESS[backend]
    parts.append((f"Ray-side processes ({ray_side} × {per / GB:.2f} GB)", ray_side * per))
    label = f"train {backend} {mode}{gpus_per_trial or ''} G={gpus} ({sizes.source})"
    return MemoryRequest(label, tuple(parts))


def conversion_memory(config: Mapping[str, Any]) -> MemoryRequest:
    """One conversion job: a shard, one case at a time (the measured peak, scaled up for
    source cases larger than BraTS's)."""
    data = config["data"]
    source = MSD_SCAN_SHAPE if data["source"] == "msd" else tuple(data["synthetic"]["shape"])

    voxels = math.prod(source) * EXPECTED_CHANNELS
    peak = CONVERT_PEAK * max(1.0, voxels / CONVERT_SOURCE_VOXELS)
    return MemoryRequest("convert a shard", (("converter peak", peak),))


def evaluation_memory(backend: str, train: Mapping[str, Any], sizes: SplitSizes) -> MemoryRequest:
    """One evaluation job: the model predicting one test volume at a time on the CPU, bounded
    by a training step's memory at batch 1 (a forward pass keeps no activations for backward)."""
    voxels = math.prod(sizes.image_shape[:3])
    filters = train["model"]["base_filters"] / STEP_BASE_FILTERS
    step = STEP_BYTES_PER_VOXEL[backend] * voxels * filters
    return MemoryRequest(
        f"evaluate {backend} ({sizes.source})",
        (("model process", TRAINING_PROCESS_BASE[backend]), ("one volume's forward pass", step)),
    )
