"""One decoded copy of a split per node, shared read-only by every trial and worker on it.

``train.cache: true`` used to decode the split into each training process's memory: at the
paper's size (339 BraTS records, ~70 MB float16 / ~140 MB float32 each) that is 24-48 GB per
process, and four trials on a 4-GPU node held four copies. Instead the first process on a
node that needs a split materialises it, under a file lock, as two ``.npy`` files in
node-local storage (``/dev/shm`` by default), and every process memory-maps them: the pages
are the kernel's, shared, and counted once however many processes read them.

Layout under the cache root (``train.cache_dir``, else ``$DISTMIS_CACHE_DIR``, else
``/dev/shm`` when writable, else the temp dir)::

    distmis-cache-<uid>/<scope>/            one per job (SLURM) or local run: its lifetime
        owner.json                          {host, pid, create_time} of whoever removes it
        <split>-<key>/                      one materialised split
            images.npy  (N, X, Y, Z, C) in info.json's image_dtype, records in split order
            labels.npy  (N, X, Y, Z, K) uint8
            manifest.json                   the key's inputs (shards and their sha256), last
        <split>-<key>.lock

``key`` hashes the shards' names, sizes and sha256 (info.json), shapes and dtype: a split
converted again gets another key, so a stale copy is never reused. A copy is trusted only
when its manifest (written last, then the folder renamed into place) matches the key and its
arrays have the expected shapes; before materialising, every shard's sha256 is checked
against info.json, and the records are CRC-checked as they are read.

Lifetime: a :class:`CacheScope` is created by whoever outlives the training processes on the
node (the local ``distmis train`` driver; on SLURM, ``distmis ray-cluster``'s node wrapper)
and removed when it exits. A scope whose owner died without cleaning up (SIGKILL, a node
crash) is removed by :func:`sweep_stale`, which every new scope runs first.

Room: a full ``/dev/shm`` shows up as a bus error or an OOM kill deep in a training worker,
so before materialising, :func:`check_room` makes sure the copy (``info.decoded_bytes`` and a
small allowance) fits: in the folder's filesystem (:func:`free_bytes`) and, when that is a
tmpfs (:func:`tmpfs_mount`) inside a SLURM job, under the job's cgroup memory limit, which
tmpfs pages are charged to (:func:`job_memory_room`). A copy that does not fit raises
:class:`~distmis.errors.CacheSpaceError`, naming the fixes, before anything is written.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

from distmis.errors import CacheSpaceError, ContractError
from distmis.shards import buffers
from distmis.shards.info import IMAGE_DTYPES, LABEL_DTYPE, MADE_BY, DatasetInfo
from distmis.shards.parts import Part, read_part

log = logging.getLogger(__name__)

ROOT_ENV = "DISTMIS_CACHE_DIR"
SCOPE_ENV = "DISTMIS_CACHE_SCOPE"
OWNER_FILE = "owner.json"
MANIFEST_FILE = "manifest.json"
IMAGES_FILE, LABELS_FILE = "images.npy", "labels.npy"
# A scope folder without owner.json is one being created right now, or one whose creator
# died in the instant between mkdir and writing the file; only the latter gets this old.
ORPHAN_AGE_SECONDS = 3600.0
HASH_CHUNK = 1 << 20
# Besides the arrays: two npy headers (128 B each), manifest.json (~20 KB at 339 records) and
# tmpfs's rounding of each file up to whole pages; all far below this.
ROOM_ALLOWANCE_BYTES = 1 << 20
# cgroup v1 writes "no limit" as PAGE_COUNTER_MAX pages (~9.2e18 bytes); no real limit is near.
CGROUP_V1_UNLIMITED = 1 << 60
FIX_MEMORY = (
    "request more memory (the rule's mem_mb, e.g. --set-resources RULE:mem_mb=N, or sbatch --mem)"
)
FIX_CACHE_DIR = "set train.cache_dir to a node-local folder with room"
FIX_FLOAT16 = "set data.preprocess.image_dtype: float16 (half the bytes)"
FIX_NO_CACHE = "set train.cache: false (stream from the shards)"


def cache_root(configured: str | os.PathLike[str] | None = None) -> Path:
    """Where caches live: ``configured`` (``train.cache_dir``), else ``$DISTMIS_CACHE_DIR``,
    else ``/dev/shm`` when it is a writable folder (RAM-backed: no disk I/O, pages shared),
    else the temp dir (``$TMPDIR``)."""
    if configured:
        return Path(configured)
    if os.environ.get(ROOT_ENV):
        return Path(os.environ[ROOT_ENV])
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return Path(tempfile.gettempdir())


def scopes_dir(root: Path) -> Path:
    """This user's scopes under ``root`` (per user: ``/dev/shm`` is shared by everyone)."""
    return Path(root) / f"distmis-cache-{os.getuid()}"


def _process_identity(pid: int) -> dict:
    return {
        "host": socket.gethostname(),
        "pid": pid,
        "create_time": psutil.Process(pid).create_time(),
    }


def _owner_alive(owner: dict) -> bool:
    """Whether the process in ``owner`` (this host's) still runs; a reused pid does not count."""
    try:
        return (
            abs(psutil.Process(int(owner["pid"])).create_time() - float(owner["create_time"])) < 1
        )
    except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError, TypeError, ValueError):
        return False


def sweep_stale(root: Path) -> list[Path]:
    """Remove this user's scopes under ``root`` whose owner on this host is gone; returns them.

    Scopes of other hosts (a shared ``cache_dir``) are left alone: their liveness cannot be
    checked from here.
    """
    removed = []
    base = scopes_dir(root)
    if not base.is_dir():
        return removed
    here = socket.gethostname()
    for scope in sorted(p for p in base.iterdir() if p.is_dir()):
        owner_file = scope / OWNER_FILE
        try:
            owner = json.loads(owner_file.read_text())
        except FileNotFoundError:
            with contextlib.suppress(FileNotFoundError):
                if time.time() - scope.stat().st_mtime > ORPHAN_AGE_SECONDS:
                    shutil.rmtree(scope, ignore_errors=True)
                    removed.append(scope)
            continue
        except (OSError, json.JSONDecodeError):
            owner = {}
        if owner.get("host", here) == here and not _owner_alive(owner):
            shutil.rmtree(scope, ignore_errors=True)
            removed.append(scope)
    for scope in removed:
        log.warning("removed the node cache %s left behind by a run that did not clean up", scope)
    return removed


@dataclass(frozen=True)
class CacheScope:
    """A folder of node caches that lives as long as its owner process (see module docstring)."""

    path: Path

    @classmethod
    def create(cls, root: Path, name: str, owner_pid: int | None = None) -> CacheScope:
        """Sweep stale scopes under ``root``, then create scope ``name`` owned by ``owner_pid``
        (default: this process). An existing scope of that name is taken over."""
        root = Path(root)
        sweep_stale(root)
        path = scopes_dir(root) / name
        path.mkdir(parents=True, exist_ok=True)
        identity = _process_identity(owner_pid or os.getpid())
        partial = path / f".{OWNER_FILE}.{os.getpid()}"
        partial.write_text(json.dumps(identity))
        partial.replace(path / OWNER_FILE)
        return cls(path)

    def remove(self) -> None:
        """Delete the scope and every split cached in it."""
        shutil.rmtree(self.path, ignore_errors=True)


def free_bytes(path: Path) -> int:
    """Bytes a process without root's reserve may still write in ``path``'s filesystem."""
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def _mount_field(field: str) -> str:
    # /proc/self/mounts writes a space, tab, newline or backslash in a path as octal (\040).
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def tmpfs_mount(path: Path, mounts: Path = Path("/proc/self/mounts")) -> Path | None:
    """The mount point of ``path``'s filesystem when it is a tmpfs, else None (also when
    ``mounts`` cannot be read). The longest mount point holding ``path`` wins; of equal ones,
    the last listed, which is mounted over the others."""
    target = Path(os.path.realpath(path))
    try:
        lines = mounts.read_text().splitlines()
    except OSError:
        return None
    found: tuple[Path, str] | None = None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = Path(_mount_field(fields[1]))
        holds = point == target or point in target.parents
        if holds and (found is None or len(point.parts) >= len(found[0].parts)):
            found = (point, fields[2])
    return found[0] if found and found[1] == "tmpfs" else None


def _memory_stat(folder: Path, key: str) -> int:
    try:
        for line in (folder / "memory.stat").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_room(folder: Path, limit_file: str, usage_file: str, reclaimable: str) -> int | None:
    """``folder``'s memory limit less its usage; None when it sets no limit or is unreadable.
    Inactive file cache (e.g. shards read earlier) is left out of the usage: the kernel drops
    it before it kills anything. tmpfs pages are not in it: they sit on the anon lists."""
    try:
        limit_text = (folder / limit_file).read_text().strip()
        usage = int((folder / usage_file).read_text().strip())
        if limit_text == "max":
            return None
        limit = int(limit_text)
    except (OSError, ValueError):
        return None
    if limit >= CGROUP_V1_UNLIMITED:
        return None
    return limit - (usage - _memory_stat(folder, reclaimable))


def job_memory_room(
    cgroup_file: Path = Path("/proc/self/cgroup"), cgroup_root: Path = Path("/sys/fs/cgroup")
) -> int | None:
    """Bytes this process's cgroup may still charge before a memory limit stops it: the least
    room of its cgroup and each parent that sets a limit (SLURM sets it on the job, above
    the step this process runs in). cgroup v1's memory controller when ``cgroup_file`` lists
    one, else cgroup v2's ``0::`` line. None when no limit is set or none can be read."""
    try:
        lines = cgroup_file.read_text().splitlines()
    except OSError as exc:
        log.debug("cannot read %s (%s): no memory limit checked", cgroup_file, exc)
        return None
    v1 = v2 = None
    for line in lines:
        hierarchy, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if "memory" in controllers.split(","):
            v1 = path
        elif hierarchy == "0" and not controllers:
            v2 = path
    if v1 is not None:
        base, files = cgroup_root / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes")
        reclaimable, path = "total_inactive_file", v1
    elif v2 is not None:
        base, files = cgroup_root, ("memory.max", "memory.current")
        reclaimable, path = "inactive_file", v2
    else:
        log.debug("%s names no memory cgroup: no memory limit checked", cgroup_file)
        return None
    rooms = []
    folder = base / path.strip("/")
    # Up from the process's own cgroup to the hierarchy's root, whatever exists of it (in a
    # container the root may be the container's cgroup itself).
    for candidate in (folder, *folder.parents):
        if candidate != base and base not in candidate.parents:
            break
        room = _cgroup_room(candidate, *files, reclaimable)
        if room is not None:
            rooms.append(room)
    if not rooms:
        log.debug("no memory limit set or readable under %s for %s", base, path)
        return None
    return min(rooms)


def check_room(
    split: str,
    folder: Path,
    needed: int,
    image_dtype: str = "float32",
    environ: Mapping[str, str] = os.environ,
) -> None:
    """Raise :class:`CacheSpaceError` when ``needed`` bytes do not fit in ``folder``: its
    filesystem's free space, and, on a tmpfs inside a SLURM job, the room under the job's
    memory limit. The shorter of the two is the one named."""
    elsewhere = (FIX_CACHE_DIR, *([FIX_FLOAT16] if image_dtype != "float16" else []), FIX_NO_CACHE)
    shortfalls = []
    free = free_bytes(folder)
    if free < needed:
        shortfalls.append((free, "the filesystem's free space", elsewhere))
    job = environ.get("SLURM_JOB_ID")
    if job and tmpfs_mount(folder) is not None:
        room = job_memory_room()
        if room is None:
            log.debug("SLURM job %s: no cgroup memory limit readable; not checked", job)
        elif room < needed:
            limit = f"the room under SLURM job {job}'s memory limit"
            # Growing the job's memory does not grow the tmpfs: only named for this limit.
            shortfalls.append((room, limit, (FIX_MEMORY, *elsewhere)))
    if shortfalls:
        available, limit, fixes = min(shortfalls)
        raise CacheSpaceError(split, str(folder), needed, available, limit, fixes)


def split_key(info: DatasetInfo, split: str) -> str:
    """What identifies a split's cached copy: its shards (name, records, sha256), shapes, dtype."""
    payload = {
        "split": split,
        "shards": [[s.file.name, s.records, s.sha256] for s in info.splits[split]],
        "image_shape": list(info.image_shape),
        "label_shape": list(info.label_shape),
        "image_dtype": info.image_dtype,
        "compression": info.compression,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class CachedSplit:
    """A materialised split: ``images`` ``(N, X, Y, Z, C)`` and ``labels`` ``(N, X, Y, Z, K)``
    read-only memory maps (a record is ``images[i]``, no copy), ``case_ids`` in split order."""

    path: Path
    images: np.ndarray
    labels: np.ndarray
    case_ids: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.case_ids)


def _expected_shapes(info: DatasetInfo, split: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    n = info.count(split)
    return (n, *info.image_shape), (n, *info.label_shape)


def _load(folder: Path, info: DatasetInfo, split: str, key: str) -> CachedSplit | None:
    """The cached split in ``folder`` if it is complete and matches ``key``; else None."""
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        if manifest.get("key") != key:
            return None
        images = np.load(folder / IMAGES_FILE, mmap_mode="r")
        labels = np.load(folder / LABELS_FILE, mmap_mode="r")
    except (OSError, ValueError, json.JSONDecodeError):
        return None
    image_shape, label_shape = _expected_shapes(info, split)
    if (
        images.shape != image_shape
        or labels.shape != label_shape
        or images.dtype != IMAGE_DTYPES[info.image_dtype]
        or labels.dtype != LABEL_DTYPE
        or len(manifest.get("case_ids", ())) != image_shape[0]
    ):
        return None
    return CachedSplit(folder, images, labels, tuple(manifest["case_ids"]))


def _check_sha256(info: DatasetInfo, split: str) -> None:
    for shard in info.splits[split]:
        digest = hashlib.sha256()
        try:
            with shard.file.open("rb") as handle:
                while chunk := handle.read(HASH_CHUNK):
                    digest.update(chunk)
        except FileNotFoundError as exc:
            raise ContractError(f"shard {shard.file} is missing; rerun {MADE_BY}") from exc
        if digest.hexdigest() != shard.sha256:
            raise ContractError(
                f"{shard.file} does not match its sha256 in {info.root / 'info.json'}; "
                f"rerun {MADE_BY}"
            )


def _write_npy_header(handle, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_2_0(handle, header)


def _materialise(folder: Path, info: DatasetInfo, split: str, key: str) -> None:
    """Decode every record of ``split`` into ``folder`` (streamed: one record in memory)."""
    started = time.perf_counter()
    _check_sha256(info, split)
    partial = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    image_shape, label_shape = _expected_shapes(info, split)
    case_ids = []
    # Payloads in reusable blocks: no fresh memory per record, and none left behind.
    records = read_part(
        Part(info.splits[split]),
        info.image_dtype,
        len(info.label_channels),
        info.compression,
        buffers.process_pool(),
    )
    try:
        with (
            (partial / IMAGES_FILE).open("wb") as images,
            (partial / LABELS_FILE).open("wb") as labels,
        ):
            _write_npy_header(images, IMAGE_DTYPES[info.image_dtype], image_shape)
            _write_npy_header(labels, LABEL_DTYPE, label_shape)
            for record in records:
                # Views of the payload, already in the stored dtype and layout: written as is.
                images.write(memoryview(np.ascontiguousarray(record.image)).cast("B"))
                labels.write(memoryview(np.ascontiguousarray(record.label)).cast("B"))
                case_ids.append(record.case_id)
        manifest = {"key": key, "split": split, "case_ids": case_ids, "made_by_pid": os.getpid()}
        manifest["shards"] = [[s.file.name, s.records, s.sha256] for s in info.splits[split]]
        (partial / MANIFEST_FILE).write_text(json.dumps(manifest))
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    size = sum(f.stat().st_size for f in folder.iterdir())
    log.info(
        "cached %s (%d records, %.2f GB) in %s in %.1f s",
        split,
        len(case_ids),
        size / 1e9,
        folder,
        time.perf_counter() - started,
    )


def _split_folder(scope: Path, split: str, key: str) -> Path:
    """Where ``split``'s copy of key ``key`` lives in ``scope``."""
    return Path(scope) / f"{split}-{key[:16]}"


def _room_needed(info: DatasetInfo, split: str) -> int:
    """Bytes ``split``'s copy takes: its decoded arrays and the allowance for the rest."""
    return info.decoded_bytes(split) + ROOM_ALLOWANCE_BYTES


def check_room_for_run(info: DatasetInfo, scope: Path, splits=("train", "val")) -> None:
    """Before a run starts: raise :class:`CacheSpaceError` when ``splits`` (those not cached in
    ``scope`` yet) do not fit together, so a node short of room fails in a second, not after
    its first split was written. Each worker checks its own node again (:func:`open_split`)."""
    scope = Path(scope)
    missing = []
    for split in splits:
        key = split_key(info, split)
        if _load(_split_folder(scope, split, key), info, split, key) is None:
            missing.append(split)
    if not missing:
        return
    # The scope folder may not exist yet on this node: its nearest existing folder is on the
    # same filesystem.
    folder = next(p for p in (scope, *scope.parents) if p.is_dir())
    needed = sum(_room_needed(info, split) for split in missing)
    check_room(" + ".join(missing), folder, needed, info.image_dtype)


def open_split(info: DatasetInfo, split: str, scope: Path) -> CachedSplit:
    """The node's cached copy of ``split`` in ``scope``, materialised first if no process has.

    Processes that ask at once wait on one lock; the first materialises, the others then map
    what it wrote. Raises :class:`ContractError` when a shard does not match info.json, and
    :class:`CacheSpaceError` when the copy does not fit (:func:`check_room`).
    """
    if split not in info.splits:
        raise ValueError(f"split must be one of {sorted(info.splits)}, got {split!r}")
    scope = Path(scope)
    if not scope.is_dir():
        # A node that neither the driver nor `distmis ray-cluster` prepared (a Ray cluster
        # joined through train.ray_address): tie the scope to the process that started this
        # worker (Ray's raylet), so the next sweep on this node removes it once Ray stops.
        CacheScope.create(scope.parent.parent, scope.name, owner_pid=os.getppid())
        log.warning("created node cache scope %s, owned by pid %d", scope, os.getppid())
    key = split_key(info, split)
    folder = _split_folder(scope, split, key)
    with (scope / f"{folder.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cached = _load(folder, info, split, key)
        if cached is None:
            check_room(split, scope, _room_needed(info, split), info.image_dtype)
            _materialise(folder, info, split, key)
            cached = _load(folder, info, split, key)
        if cached is None:  # written just now and unreadable: the storage is at fault
            raise ContractError(f"the cached copy {folder} of {split} cannot be read back")
        return cached
