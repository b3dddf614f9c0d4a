"""NIfTI → TFRecord conversion in three steps that map one-to-one onto Snakemake rules.

1. :func:`plan_conversion` lists and splits the cases → ``plan.json``
   (rule ``plan_tfrecords``);
2. :func:`convert_shard` writes one shard and its manifest → ``<shard>`` +
   ``manifests/<shard>.json`` (rule ``convert_tfrecords``, one job per shard, so the
   work spreads over cores and over SLURM nodes);
3. :func:`write_info` merges the manifests → ``info.json`` (rule ``index_tfrecords``).

:func:`convert_dataset` runs all three in one process pool for ``distmis convert``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from distmis.errors import CaseError, DatasetError
from distmis.fileio import atomic_path, read_json, write_json
from distmis.prepare import msd
from distmis.prepare.preprocess import preprocess_case
from distmis.prepare.split import SPLITS, assign_shards, shard_filename, split_cases
from distmis.prepare.task import LABEL_MODES
from distmis.shards import heap, records
from distmis.shards.info import IMAGE_DTYPES
from distmis.shards.tfrecord import COMPRESSIONS, TFRecordWriter

log = logging.getLogger(__name__)

INFO_FORMAT_VERSION = 1


@dataclass(frozen=True)
class ConvertParams:
    """Preprocessing parameters (config.yaml ``data.preprocess``), validated on creation."""

    shape: tuple[int, int, int]
    label_mode: str = "binary"
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    split_seed: int = 0
    shards: tuple[int, int, int] = (1, 1, 1)
    compression: str = "none"
    image_dtype: str = "float32"
    skip_bad_cases: bool = False
    # The RAS grid each scan is resampled to before the crop/pad; None keeps its voxels.
    resize: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or any(int(s) < 1 for s in self.shape):
            raise ValueError(f"shape must be three positive sizes, got {self.shape}")
        if self.resize is not None and (
            len(self.resize) != 3 or any(int(s) < 1 for s in self.resize)
        ):
            raise ValueError(f"resize must be None or three positive sizes, got {self.resize}")
        if self.label_mode not in LABEL_MODES:
            raise ValueError(
                f"labels must be one of {sorted(LABEL_MODES)}, got {self.label_mode!r}"
            )
        if (
            len(self.split) != 3
            or any(f < 0 for f in self.split)
            or abs(sum(self.split) - 1) > 1e-6
        ):
            raise ValueError(
                f"split fractions must be three non-negative numbers summing to 1, got {self.split}"
            )
        if len(self.shards) != 3 or any(int(n) < 1 for n in self.shards):
            raise ValueError(f"shards must be three counts >= 1, got {self.shards}")
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, got {self.compression!r}")
        if self.image_dtype not in IMAGE_DTYPES:
            raise ValueError(
                f"image_dtype must be one of {sorted(IMAGE_DTYPES)}, got {self.image_dtype!r}"
            )

    @classmethod
    def from_config(cls, preprocess: Mapping) -> ConvertParams:
        """Build from the validated ``data.preprocess`` config section."""
        split, shards = preprocess["split"], preprocess["shards"]
        return cls(
            shape=tuple(preprocess["shape"]),
            label_mode=preprocess["labels"],
            split=tuple(split[s] for s in SPLITS),
            split_seed=preprocess["split_seed"],
            shards=tuple(shards[s] for s in SPLITS),
            compression=preprocess["compression"],
            image_dtype=preprocess["image_dtype"],
            skip_bad_cases=preprocess["skip_bad_cases"],
            resize=None if preprocess["resize"] is None else tuple(preprocess["resize"]),
        )

    def to_json(self) -> dict:
        return {
            **asdict(self),
            "shape": list(self.shape),
            "resize": None if self.resize is None else list(self.resize),
            "split": dict(zip(SPLITS, self.split, strict=True)),
            "shards": dict(zip(SPLITS, self.shards, strict=True)),
        }

    @classmethod
    def from_json(cls, payload: Mapping) -> ConvertParams:
        return cls(
            shape=tuple(payload["shape"]),
            label_mode=payload["label_mode"],
            split=tuple(payload["split"][s] for s in SPLITS),
            split_seed=payload["split_seed"],
            shards=tuple(payload["shards"][s] for s in SPLITS),
            compression=payload["compression"],
            image_dtype=payload["image_dtype"],
            skip_bad_cases=payload["skip_bad_cases"],
            # Plans written before resizing existed have no key: they did not resample.
            resize=None if payload.get("resize") is None else tuple(payload["resize"]),
        )


def _source_description(task: msd.MsdTask) -> dict:
    provenance_path = task.root / "source.json"
    provenance = (
        read_json(provenance_path, "download_brats/synthesize_brats")
        if provenance_path.is_file()
        else {}
    )
    return {"dataset": task.name, "task_dir": str(task.root), **provenance}


def plan_conversion(msd_dir: Path, params: ConvertParams) -> dict:
    """List the task's cases, split them and deal each split into its shards.

    Raises DatasetError when a split would have fewer cases than shards (every shard
    must hold a record so data-parallel workers each get a file).
    """
    task = msd.open_task(msd_dir)
    by_id = {case.case_id: case for case in task.cases}
    splits = split_cases(
        list(by_id), dict(zip(SPLITS, params.split, strict=True)), params.split_seed
    )
    shards: dict[str, list[dict]] = {}
    for split_name, shard_count, fraction in zip(SPLITS, params.shards, params.split, strict=True):
        ids = splits[split_name]
        # A split asked to be empty (fraction 0) gets empty shards; otherwise every shard
        # must hold a record so that data-parallel workers each get a file.
        if fraction > 0 and len(ids) < shard_count:
            raise DatasetError(
                f"split '{split_name}' gets {len(ids)} of {len(by_id)} cases but "
                f"data.preprocess.shards.{split_name} = {shard_count}; lower the shard count "
                "(`distmis convert --shards`) or change data.preprocess.split"
            )
        shards[split_name] = [
            {
                "file": shard_filename(split_name, i, shard_count, params.compression),
                "cases": [
                    {"case_id": cid, "image": str(by_id[cid].image), "label": str(by_id[cid].label)}
                    for cid in shard_ids
                ],
            }
            for i, shard_ids in enumerate(assign_shards(ids, shard_count))
        ]
    return {
        "source": _source_description(task),
        "modalities": list(task.modalities),
        "params": params.to_json(),
        "shards": shards,
    }


def shard_entry(plan: Mapping, split: str, index: int) -> dict:
    """The plan's entry for one shard, with a clear error for an index out of range."""
    entries = plan["shards"][split]
    if not 0 <= index < len(entries):
        raise DatasetError(f"plan has {len(entries)} {split} shards, no shard {index}")
    return entries[index]


def find_shard(plan: Mapping, filename: str) -> tuple[str, int]:
    """``(split, index)`` of the planned shard called ``filename``."""
    for split, entries in plan["shards"].items():
        for index, entry in enumerate(entries):
            if entry["file"] == filename:
                return split, index
    raise DatasetError(f"{filename} is not a shard of the current plan.json (config changed?)")


def convert_shard(
    plan: Mapping,
    split: str,
    index: int,
    shard_path: Path,
    on_case_done: Callable[[], None] | None = None,
) -> dict:
    """Convert one shard's cases and write the shard atomically; return its manifest.

    A bad case raises :class:`CaseError` unless ``skip_bad_cases`` is set, in which case
    it is left out and reported in the manifest's ``skipped`` list. The shard's bytes depend
    only on the plan and the source files (not on the process or the worker count), so its
    sha256 — computed while writing — is reproducible.
    """
    params = ConvertParams.from_json(plan["params"])
    entry = shard_entry(plan, split, index)
    written, skipped = [], []
    with atomic_path(shard_path) as tmp, TFRecordWriter(tmp, params.compression) as writer:
        for case in entry["cases"]:
            files = msd.CaseFiles(case["case_id"], Path(case["image"]), Path(case["label"]))
            try:
                loaded = msd.load_case(files)
                image, label, geometry = preprocess_case(
                    loaded.image,
                    loaded.label,
                    loaded.affine,
                    params.shape,
                    params.label_mode,
                    IMAGE_DTYPES[params.image_dtype],
                    resize=params.resize,
                )
            except CaseError as exc:
                if not params.skip_bad_cases:
                    raise
                log.warning("skipping %s", exc)
                skipped.append({"case_id": exc.case_id, "reason": exc.problem})
            else:
                writer.write(records.example_pieces(files.case_id, image, label))
                written.append(
                    {
                        "case_id": files.case_id,
                        "split": split,
                        "shard": entry["file"],
                        **geometry.to_json(),
                    }
                )
            if on_case_done is not None:
                on_case_done()
    return {
        "split": split,
        "index": index,
        "file": entry["file"],
        "records": len(written),
        "sha256": writer.sha256,
        "cases": written,
        "skipped": skipped,
    }


def write_info(plan: Mapping, manifests: Sequence[Mapping], info_path: Path) -> dict:
    """Merge shard manifests into ``info.json`` (the contract training reads)."""
    params = ConvertParams.from_json(plan["params"])
    label_channels = LABEL_MODES[params.label_mode]
    by_split = {
        split: sorted((m for m in manifests if m["split"] == split), key=lambda m: m["index"])
        for split in SPLITS
    }
    for split, expected in zip(SPLITS, params.shards, strict=True):
        if len(by_split[split]) != expected:
            raise DatasetError(
                f"expected {expected} {split} shard manifests, got {len(by_split[split])}"
            )
    info = {
        "format_version": INFO_FORMAT_VERSION,
        "source": plan["source"],
        "modalities": plan["modalities"],
        "image_shape": [*params.shape, len(plan["modalities"])],
        "label_shape": [*params.shape, len(label_channels)],
        "label_channels": list(label_channels),
        "image_dtype": params.image_dtype,
        "compression": params.compression,
        "preprocessing": {
            **params.to_json(),
            "orientation": "RAS (closest canonical, axes permuted/flipped only)",
            # Not "resize": that key (from params) holds the grid itself, or null.
            "resampling": (
                "none (source voxels kept)"
                if params.resize is None
                else f"RAS scan resampled to {list(params.resize)} over the same field of view "
                "(spacing × size / resize; image linear per channel, MSD label map nearest "
                "neighbour); each case's resampled_shape in cases[]"
            ),
            "crop": "centred crop/zero-pad to shape",
            "normalization": "per-channel z-score over nonzero voxels",
        },
        "splits": {
            split: {
                "count": sum(m["records"] for m in by_split[split]),
                "shards": [
                    {"file": m["file"], "records": m["records"], "sha256": m["sha256"]}
                    for m in by_split[split]
                ],
            }
            for split in SPLITS
        },
        "cases": [case for split in SPLITS for m in by_split[split] for case in m["cases"]],
        "skipped": [s for split in SPLITS for m in by_split[split] for s in m["skipped"]],
    }
    write_json(info_path, info)
    return info


def _convert_shard_job(plan: Mapping, split: str, index: int, out_dir: str, ticks) -> dict:
    entry = shard_entry(plan, split, index)
    manifest = convert_shard(
        plan, split, index, Path(out_dir) / entry["file"], lambda: ticks.put(1)
    )
    return manifest


def convert_dataset(
    msd_dir: Path, out_dir: Path, params: ConvertParams, workers: int = 1, progress: bool = True
) -> dict:
    """Plan, convert every shard with ``workers`` processes, and write ``info.json``.

    Everything is written into a hidden staging folder beside ``out_dir`` and moved into it
    only when every shard succeeded, so a failed run (a bad case, Ctrl-C) leaves ``out_dir``
    exactly as it was.
    """
    out_dir = Path(out_dir)
    plan = plan_conversion(msd_dir, params)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        info = _convert_into(plan, staging, workers, progress)
        _move_into(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return info


def _move_into(staging: Path, out_dir: Path) -> None:
    """Replace the files of ``out_dir`` that ``staging`` holds; leave its others alone."""
    for path in sorted(staging.rglob("*")):
        if path.is_file():
            target = out_dir / path.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)


def _convert_into(plan: Mapping, out_dir: Path, workers: int, progress: bool) -> dict:
    """Every shard of ``plan`` and ``info.json`` into ``out_dir`` (the staging folder)."""
    write_json(out_dir / "plan.json", plan)
    jobs = [(split, i) for split in SPLITS for i in range(len(plan["shards"][split]))]
    total_cases = sum(len(e["cases"]) for split in SPLITS for e in plan["shards"][split])
    # spawn, not fork: a forked worker inherits the parent's threads' locks (tqdm's monitor,
    # the Manager's) in whatever state they were, and Python 3.14 makes spawn the default.
    context = multiprocessing.get_context("spawn")
    manifests = []
    started = time.perf_counter()
    with (
        context.Manager() as manager,
        ProcessPoolExecutor(
            max(1, workers), mp_context=context, initializer=heap.reuse_freed_blocks
        ) as pool,
    ):
        ticks = manager.Queue()
        futures = [
            pool.submit(_convert_shard_job, plan, split, i, str(out_dir), ticks)
            for split, i in jobs
        ]
        with tqdm(total=total_cases, unit="case", desc="convert", disable=not progress) as bar:
            pending = set(futures)
            while pending:
                while not ticks.empty():
                    ticks.get()
                    bar.update(1)
                done = {f for f in pending if f.done()}
                for future in done:
                    manifests.append(future.result())
                pending -= done
                if pending:
                    time.sleep(0.1)
            while not ticks.empty():
                ticks.get()
                bar.update(1)
    info = write_info(plan, manifests, out_dir / "info.json")
    log.info("converted %d cases in %.1f s", total_cases, time.perf_counter() - started)
    return info
