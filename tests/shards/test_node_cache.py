"""The node cache on shards the real converter wrote: one materialisation per node, shared
pages, stale copies never reused, and scopes removed by their owner or by the next sweep."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from distmis.errors import CacheSpaceError, ContractError
from distmis.prepare.convert import ConvertParams, convert_dataset
from distmis.prepare.synthetic import synthesize_dataset
from distmis.shards import node_cache
from distmis.shards.info import DatasetInfo
from distmis.shards.records import read_records

REPO = Path(__file__).resolve().parents[2]


def convert(root: Path, cases: int, shape=(16, 16, 16), seed: int = 0, **params) -> DatasetInfo:
    task = synthesize_dataset(root / "msd", cases, (24, 24, 20), seed, progress=False)
    settings = {"shape": shape, "split": (0.5, 0.25, 0.25), "shards": (3, 1, 1), **params}
    convert_dataset(task, root / "tfrecords", ConvertParams(**settings), progress=False)
    return DatasetInfo.from_dir(root / "tfrecords")


@pytest.fixture(scope="module")
def info(tmp_path_factory) -> DatasetInfo:
    return convert(tmp_path_factory.mktemp("data"), 8, image_dtype="float16")


def split_records(info: DatasetInfo, split: str):
    k = len(info.label_channels)
    return [r for f in info.shard_files(split) for r in read_records(f, info.image_dtype, k)]


def count_materialisations(monkeypatch) -> list[str]:
    made: list[str] = []
    real = node_cache._materialise
    monkeypatch.setattr(node_cache, "_materialise", lambda *a: made.append(a[2]) or real(*a))
    return made


def test_the_cached_split_is_the_split_in_order_as_stored_read_only(info, tmp_path):
    cached = node_cache.open_split(info, "train", tmp_path)
    expected = split_records(info, "train")
    assert cached.case_ids == tuple(r.case_id for r in expected)
    assert cached.images.dtype == np.float16 and cached.labels.dtype == np.uint8
    np.testing.assert_array_equal(cached.images, np.stack([r.image for r in expected]))
    np.testing.assert_array_equal(cached.labels, np.stack([r.label for r in expected]))
    assert isinstance(cached.images, np.memmap) and not cached.images.flags.writeable


def test_a_second_open_maps_the_first_copy(info, tmp_path, monkeypatch):
    made = count_materialisations(monkeypatch)
    first = node_cache.open_split(info, "train", tmp_path)
    second = node_cache.open_split(info, "train", tmp_path)
    node_cache.open_split(info, "val", tmp_path)
    assert made == ["train", "val"] and first.path == second.path


def test_a_reconverted_split_gets_a_new_copy_never_the_stale_one(tmp_path, monkeypatch):
    made = count_materialisations(monkeypatch)
    old = convert(tmp_path / "a", 6, seed=1)
    new = convert(tmp_path / "b", 6, seed=2)  # same names and shapes, other voxels
    scope = tmp_path / "scope"
    scope.mkdir()
    old_copy = node_cache.open_split(old, "train", scope)
    new_copy = node_cache.open_split(new, "train", scope)
    assert made == ["train", "train"] and old_copy.path != new_copy.path
    np.testing.assert_array_equal(
        new_copy.images, np.stack([r.image for r in split_records(new, "train")])
    )


def test_an_incomplete_copy_is_rebuilt(info, tmp_path, monkeypatch):
    cached = node_cache.open_split(info, "train", tmp_path)
    (cached.path / node_cache.MANIFEST_FILE).unlink()  # a materialisation cut short
    made = count_materialisations(monkeypatch)
    again = node_cache.open_split(info, "train", tmp_path)
    assert made == ["train"]
    np.testing.assert_array_equal(again.images, cached.images)


def test_a_shard_that_does_not_match_info_json_is_refused(tmp_path):
    info = convert(tmp_path, 6)
    shard = info.splits["train"][0].file
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    scope = tmp_path / "scope"
    scope.mkdir()
    with pytest.raises(ContractError, match=f"{shard.name} does not match its sha256"):
        node_cache.open_split(info, "train", scope)
    assert not [p for p in scope.iterdir() if p.is_dir()], "no partial copy left"


def test_a_split_that_does_not_fit_is_refused_before_anything_is_written(
    info, tmp_path, monkeypatch
):
    made = count_materialisations(monkeypatch)
    needed = info.decoded_bytes("train") + node_cache.ROOM_ALLOWANCE_BYTES
    monkeypatch.setattr(node_cache, "free_bytes", lambda path: needed - 1)
    with pytest.raises(CacheSpaceError) as refused:
        node_cache.open_split(info, "train", tmp_path)
    assert refused.value.needed == needed and refused.value.available == needed - 1
    assert made == [] and not [p for p in tmp_path.iterdir() if p.is_dir()]
    monkeypatch.setattr(node_cache, "free_bytes", lambda path: needed)
    assert len(node_cache.open_split(info, "train", tmp_path)) == info.count("train")


def test_check_room_names_the_split_folder_sizes_limit_and_fixes_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(node_cache, "free_bytes", lambda path: 3_100_000_000)
    node_cache.check_room("train", tmp_path, 3_100_000_000, "float32", environ={})  # fits
    with pytest.raises(CacheSpaceError) as refused:
        node_cache.check_room("train", tmp_path, 51_234_000_000, "float32", environ={})
    assert str(refused.value) == (
        f"no room to cache split 'train' in {tmp_path}: it needs 51.23 GB but the "
        "filesystem's free space is 3.10 GB; fix: set train.cache_dir to a node-local folder "
        "with room; set data.preprocess.image_dtype: float16 (half the bytes); or set "
        "train.cache: false (stream from the shards)"
    )
    with pytest.raises(CacheSpaceError, match="with room; or set train.cache: false"):
        node_cache.check_room("train", tmp_path, 51_234_000_000, "float16", environ={})


def test_check_room_on_a_tmpfs_in_a_slurm_job_checks_the_jobs_memory_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(node_cache, "free_bytes", lambda path: 100_000_000_000)
    monkeypatch.setattr(node_cache, "tmpfs_mount", lambda path: Path("/dev/shm"))
    monkeypatch.setattr(node_cache, "job_memory_room", lambda: 2_000_000_000)
    node_cache.check_room("val", tmp_path, 5_000_000_000, environ={})  # not a SLURM job
    with pytest.raises(CacheSpaceError) as refused:
        node_cache.check_room("val", tmp_path, 5_000_000_000, environ={"SLURM_JOB_ID": "77"})
    message = str(refused.value)
    assert "but the room under SLURM job 77's memory limit is 2.00 GB" in message
    assert f"fix: {node_cache.FIX_MEMORY}; set train.cache_dir" in message
    monkeypatch.setattr(node_cache, "job_memory_room", lambda: None)  # no limit readable
    node_cache.check_room("val", tmp_path, 5_000_000_000, environ={"SLURM_JOB_ID": "77"})


def test_the_space_error_pickles_with_its_message_and_fields():
    error = CacheSpaceError("train", "/dev/shm/x", 51_000_000_000, 3_000_000_000, "L", ("a", "b"))
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is CacheSpaceError and str(again) == str(error)
    assert (again.needed, again.available, again.fixes) == (
        51_000_000_000,
        3_000_000_000,
        ("a", "b"),
    )


def test_tmpfs_mount_is_the_longest_mount_point_holding_the_path(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "overlay / overlay rw 0 0\n"
        "tmpfs /dev/shm tmpfs rw,size=65536k 0 0\n"
        "tmpfs /scratch/my\\040job tmpfs rw 0 0\n"
        "/dev/sda1 /scratch/my\\040job/disk ext4 rw 0 0\n"
    )
    assert node_cache.tmpfs_mount(Path("/dev/shm/distmis-cache-0"), mounts) == Path("/dev/shm")
    assert node_cache.tmpfs_mount(Path("/scratch/my job/a"), mounts) == Path("/scratch/my job")
    assert node_cache.tmpfs_mount(Path("/scratch/my job/disk/a"), mounts) is None
    assert node_cache.tmpfs_mount(Path("/dev/shmx"), mounts) is None
    assert node_cache.tmpfs_mount(Path("/dev/shm"), tmp_path / "absent") is None


def fake_cgroup(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text + "\n")


def test_cgroup_v2_room_is_the_tightest_limit_less_usage_up_the_tree(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text("0::/system.slice/slurmstepd.scope/job_7/step_0/user/task_0\n")
    root = tmp_path / "sys"
    job = root / "system.slice/slurmstepd.scope/job_7"
    # The step and task set no limit; the job does; its inactive file cache is reclaimable.
    fake_cgroup(job / "step_0/user/task_0", {"memory.max": "max", "memory.current": "10"})
    stat = "anon 4000000000\ninactive_file 1000000000\nactive_file 5"
    fake_cgroup(
        job, {"memory.max": "8000000000", "memory.current": "5000000000", "memory.stat": stat}
    )
    fake_cgroup(
        root / "system.slice", {"memory.max": "100000000000", "memory.current": "90000000000"}
    )
    assert node_cache.job_memory_room(proc, root) == 8_000_000_000 - 4_000_000_000
    # A parent with less room is the one that counts.
    fake_cgroup(
        root / "system.slice", {"memory.max": "100000000000", "memory.current": "97000000000"}
    )
    assert node_cache.job_memory_room(proc, root) == 3_000_000_000


def test_cgroup_v2_without_limits_has_no_room_to_report(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text("0::/job\n")
    fake_cgroup(tmp_path / "sys/job", {"memory.max": "max", "memory.current": "1000"})
    assert node_cache.job_memory_room(proc, tmp_path / "sys") is None
    assert node_cache.job_memory_room(tmp_path / "absent", tmp_path / "sys") is None


def test_cgroup_v1_room_reads_the_memory_controllers_hierarchy(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text(
        "5:cpu,cpuacct:/slurm/uid_0/job_7/step_0\n4:memory:/slurm/uid_0/job_7/step_0\n0::/\n"
    )
    memory = tmp_path / "sys/memory"
    unlimited = str(9223372036854771712)  # what cgroup v1 writes for "no limit"
    fake_cgroup(memory, {"memory.limit_in_bytes": unlimited, "memory.usage_in_bytes": "1"})
    fake_cgroup(
        memory / "slurm/uid_0/job_7",
        {
            "memory.limit_in_bytes": "6000000000",
            "memory.usage_in_bytes": "2500000000",
            "memory.stat": "inactive_file 1\ntotal_inactive_file 500000000",
        },
    )
    step = memory / "slurm/uid_0/job_7/step_0"
    fake_cgroup(step, {"memory.limit_in_bytes": unlimited, "memory.usage_in_bytes": "2000000000"})
    assert node_cache.job_memory_room(proc, tmp_path / "sys") == 4_000_000_000
    (memory / "slurm/uid_0/job_7/memory.limit_in_bytes").write_text(unlimited)
    assert node_cache.job_memory_room(proc, tmp_path / "sys") is None


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_sweep_removes_scopes_of_dead_owners_only(tmp_path):
    alive = node_cache.CacheScope.create(tmp_path, "alive")
    dead = node_cache.scopes_dir(tmp_path) / "dead"
    dead.mkdir()
    # A pid that ran and exited; with create_time 0 even a reused pid does not match.
    owner = {"host": os.uname().nodename, "pid": _dead_pid(), "create_time": 0}
    (dead / node_cache.OWNER_FILE).write_text(json.dumps(owner))
    elsewhere = node_cache.scopes_dir(tmp_path) / "other-host"
    elsewhere.mkdir()
    (elsewhere / node_cache.OWNER_FILE).write_text(json.dumps({**owner, "host": "node-x"}))
    being_made = node_cache.scopes_dir(tmp_path) / "being-made"  # owner.json not yet written
    being_made.mkdir()
    assert node_cache.sweep_stale(tmp_path) == [dead]
    assert alive.path.is_dir() and elsewhere.is_dir() and being_made.is_dir()


def test_cache_root_prefers_config_then_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(node_cache.ROOT_ENV, str(tmp_path / "env"))
    assert node_cache.cache_root(str(tmp_path / "cfg")) == tmp_path / "cfg"
    assert node_cache.cache_root(None) == tmp_path / "env"
    monkeypatch.delenv(node_cache.ROOT_ENV)
    assert node_cache.cache_root(None) in (Path("/dev/shm"), Path(os.environ.get("TMPDIR", "/tmp")))


# Two "trial processes" on one node: each opens the split through the node cache at the
# same time, touches every record, and, once both have, reports its memory and waits to be
# told to exit.
TRIAL = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import psutil
    from distmis.shards import node_cache
    from distmis.shards.info import DatasetInfo

    info = DatasetInfo.from_dir(Path(sys.argv[1]))
    before = psutil.Process().memory_full_info()
    cached = node_cache.open_split(info, "train", Path(sys.argv[2]))
    total = 0.0
    for i in range(len(cached)):  # read every page, as an epoch does
        total += float(cached.images[i].sum(dtype="float64"))
    print("read", flush=True)
    sys.stdin.readline()  # measured once both have read: a page only one has mapped is private
    memory = psutil.Process().memory_full_info()
    manifest = json.loads((cached.path / "manifest.json").read_text())
    print(json.dumps({"pss": memory.pss - before.pss, "uss": memory.uss - before.uss,
                      "total": total, "made_by": manifest["made_by_pid"]}), flush=True)
    sys.stdin.readline()
    """
)


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux PSS")
def test_two_trial_processes_share_one_materialised_copy(tmp_path):
    # 24 train records of 96x96x64x4 float32 (9.4 MB each): a 226 MB copy, large against
    # what a process needs besides (~20 MB for the one that materialises: its read blocks).
    info = convert(tmp_path, 48, shape=(96, 96, 64))
    copy_bytes = info.count("train") * (np.prod(info.image_shape) * 4 + np.prod(info.label_shape))
    scope = node_cache.CacheScope.create(tmp_path / "root", "job")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    trials = [
        subprocess.Popen(
            [sys.executable, "-c", TRIAL, str(info.root), str(scope.path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )  # fmt: skip
        for _ in range(2)
    ]
    try:
        assert [t.stdout.readline().strip() for t in trials] == ["read", "read"]
        for trial in trials:
            trial.stdin.write("\n")
            trial.stdin.flush()
        reports = [json.loads(t.stdout.readline()) for t in trials]
    finally:
        for trial in trials:
            trial.communicate("\n", timeout=60)
    assert reports[0]["made_by"] == reports[1]["made_by"] in {t.pid for t in trials}
    assert reports[0]["total"] == reports[1]["total"]
    # What opening and reading the split added to each process. Shared pages count half in
    # each one's PSS: together about one copy, where private copies would be two.
    combined = sum(r["pss"] for r in reports)
    assert combined < 1.3 * copy_bytes, (combined, copy_bytes)
    for report in reports:
        assert report["uss"] < 0.25 * copy_bytes, report
    scope.remove()
    assert not scope.path.exists()


OWNER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from distmis.shards import node_cache
    from distmis.shards.info import DatasetInfo

    scope = node_cache.CacheScope.create(Path(sys.argv[2]), "run-killed")
    node_cache.open_split(DatasetInfo.from_dir(Path(sys.argv[1])), "train", scope.path)
    print(scope.path, flush=True)
    sys.stdin.readline()
    """
)


def test_a_killed_runs_copy_is_removed_by_the_next_run(info, tmp_path):
    root = tmp_path / "root"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(info.root), str(root)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    path = Path(owner.stdout.readline().strip())
    assert any(path.glob("train-*/images.npy"))
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait()
    assert path.is_dir()  # nobody cleaned up...
    following = node_cache.CacheScope.create(root, "run-next")  # ...until the next run starts
    assert not path.exists() and following.path.is_dir()


def test_a_local_run_removes_its_scope_on_sigterm(info, tmp_path):
    root = tmp_path / "root"
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from distmis.train.run import node_cache_scope
        from distmis.shards import node_cache
        from distmis.shards.info import DatasetInfo

        class Settings:
            cache_dir = {str(root)!r}

        with node_cache_scope(Settings()) as scope:
            node_cache.open_split(DatasetInfo.from_dir(Path({str(info.root)!r})), "train", scope)
            print(scope, flush=True)
            time.sleep(600)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop(node_cache.SCOPE_ENV, None)
    run = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env
    )
    path = Path(run.stdout.readline().strip())
    assert any(path.glob("train-*/images.npy"))
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=30) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 5
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not path.exists()
