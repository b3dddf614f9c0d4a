"""The node cache on shards the real converter wrote: one materialisation per node, shared
pages, stale copies never reused, and scopes removed by their owner or by the next sweep."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from distmis.data import node_cache
from distmis.data.convert import ConvertParams, convert_dataset
from distmis.data.info import DatasetInfo
from distmis.data.records import read_records
from distmis.data.synthetic import synthesize_dataset
from distmis.errors import ContractError

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
    from distmis.data import node_cache
    from distmis.data.info import DatasetInfo

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
    from distmis.data import node_cache
    from distmis.data.info import DatasetInfo

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
        from distmis.data import node_cache
        from distmis.data.info import DatasetInfo

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
