"""distmis.prepare.download against a real HTTP server on 127.0.0.1 and real tar files."""

from __future__ import annotations

import hashlib
import io
import json
import random
import socket
import tarfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from distmis.errors import DownloadError
from distmis.prepare import download
from distmis.prepare.download import (
    TASK_DIRNAME,
    download_file,
    extract_archive,
    fetch_msd,
    md5_of,
    verify_md5,
)

ARCHIVE_PATH = "/Task01_BrainTumour.tar"
JUNK = f"{TASK_DIRNAME}/imagesTr/._BRATS_001.nii.gz"


def _bytes(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


# Relative path inside the task folder -> content; sizes make the tar ~200 KiB so a cut
# lands well inside file data.
DATASET_FILES: dict[str, bytes] = {
    "dataset.json": json.dumps({"name": "BRATS", "numTraining": 1}).encode(),
    "imagesTr/BRATS_001.nii.gz": _bytes(1, 120_000),
    "labelsTr/BRATS_001.nii.gz": _bytes(2, 40_000),
    "imagesTs/BRATS_485.nii.gz": _bytes(3, 30_000),
}


# --------------------------------------------------------------------------- tar builders


def _add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    tar.addfile(info)


def _add_symlink(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    tar.addfile(info)


def build_tar(
    path: Path, *, extra: Sequence[tuple[str, bytes]] = (), with_dataset: bool = True
) -> Path:
    """The MSD layout in miniature, plus macOS junk and any ``extra`` (name, bytes) members."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for sub in ("", "/imagesTr", "/labelsTr", "/imagesTs"):
            _add_dir(tar, TASK_DIRNAME + sub)
        for rel, data in DATASET_FILES.items():
            if rel == "dataset.json" and not with_dataset:
                continue
            _add_file(tar, f"{TASK_DIRNAME}/{rel}", data)
        _add_file(tar, JUNK, b"Mac OS X AppleDouble")
        for name, data in extra:
            _add_file(tar, name, data)
    return path


def md5_bytes(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture
def good_tar(tmp_path: Path) -> Path:
    return build_tar(tmp_path / "source" / "Task01_BrainTumour.tar")


@pytest.fixture(autouse=True)
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record backoff delays instead of sleeping, so retry tests take milliseconds."""
    recorded: list[float] = []
    monkeypatch.setattr(download, "_sleep", recorded.append)
    return recorded


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy from the environment would intercept requests meant for the local server.
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")


# --------------------------------------------------------------------------- HTTP server


@dataclass
class FakeServer:
    base: str = ""
    payload: bytes = b""
    cut_after: int | None = None  # first request only: send full headers, this many bytes, close
    fail_with: list[int] = field(default_factory=list)  # statuses for the next requests
    honour_range: bool = True
    ranges: list[str | None] = field(default_factory=list)  # Range header of each request
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return self.base + ARCHIVE_PATH


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        fake: FakeServer = self.server.fake  # type: ignore[attr-defined]
        with fake.lock:
            fake.ranges.append(self.headers.get("Range"))
            first = len(fake.ranges) == 1
            status = fake.fail_with.pop(0) if fake.fail_with else None
        if self.path != ARCHIVE_PATH:
            status = 404
        if status is not None:
            self._empty(status)
            return
        data = fake.payload
        start = _range_start(self.headers.get("Range")) if fake.honour_range else None
        if start is not None and start >= len(data):
            self._empty(416, {"Content-Range": f"bytes */{len(data)}"})
            return
        body = data if start is None else data[start:]
        self.send_response(200 if start is None else 206)
        if start is not None:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if first and fake.cut_after is not None:
            self.wfile.write(body[: fake.cut_after])
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)

    def _empty(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", "0")
        self.end_headers()


def _range_start(header: str | None) -> int | None:
    if not header:
        return None
    assert header.startswith("bytes=") and header.endswith("-"), header
    return int(header[len("bytes=") : -1])


@pytest.fixture
def server() -> Iterator[FakeServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    fake = FakeServer(base=f"http://127.0.0.1:{httpd.server_port}")
    httpd.fake = fake  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield fake
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- 1. normal run


def test_fetch_msd_downloads_verifies_and_unpacks(
    tmp_path: Path, server: FakeServer, good_tar: Path
) -> None:
    server.payload = good_tar.read_bytes()
    want_md5 = md5_bytes(server.payload)
    out = tmp_path / "out"

    task = fetch_msd(out, url=server.url, md5=want_md5, progress=True)

    assert task == out / TASK_DIRNAME
    files = _files_under(task)
    source = json.loads(files.pop("source.json"))
    assert files == DATASET_FILES  # junk skipped, everything else byte-identical
    archive = out / "Task01_BrainTumour.tar"
    assert source == {
        "kind": "msd",
        "url": server.url,
        "archive": str(archive.resolve()),
        "md5": want_md5,
    }
    assert archive.read_bytes() == server.payload
    assert server.ranges == [None]
    # No .part, no staging folder left behind.
    assert sorted(p.name for p in out.iterdir()) == [TASK_DIRNAME, "Task01_BrainTumour.tar"]


def test_fetch_msd_is_a_noop_when_task_dir_matches(
    tmp_path: Path, server: FakeServer, good_tar: Path
) -> None:
    server.payload = good_tar.read_bytes()
    want_md5 = md5_bytes(server.payload)
    out = tmp_path / "out"
    task = fetch_msd(out, url=server.url, md5=want_md5, progress=False)
    (out / "Task01_BrainTumour.tar").unlink()  # proves the second call needs nothing from it
    stamp = (task / "source.json").stat().st_mtime_ns

    assert fetch_msd(out, url=server.url, md5=want_md5, progress=False) == task
    assert server.ranges == [None]
    assert (task / "source.json").stat().st_mtime_ns == stamp


def test_fetch_msd_refuses_task_dir_from_another_archive_before_downloading(
    tmp_path: Path, server: FakeServer, good_tar: Path
) -> None:
    server.payload = good_tar.read_bytes()
    task = tmp_path / "out" / TASK_DIRNAME
    task.mkdir(parents=True)
    (task / "source.json").write_text(json.dumps({"kind": "msd", "md5": "1" * 32}))

    with pytest.raises(DownloadError, match="1" * 32) as info:
        fetch_msd(tmp_path / "out", url=server.url, md5=md5_bytes(server.payload), progress=False)
    assert str(task) in str(info.value)
    assert server.ranges == []


# --------------------------------------------------------------------------- 2. resume


def test_cut_connection_is_resumed_with_range(
    tmp_path: Path, server: FakeServer, good_tar: Path, sleeps: list[float]
) -> None:
    server.payload = good_tar.read_bytes()
    cut = len(server.payload) // 2
    server.cut_after = cut
    want_md5 = md5_bytes(server.payload)

    task = fetch_msd(tmp_path / "out", url=server.url, md5=want_md5, progress=False)

    assert cut > 0
    assert server.ranges == [None, f"bytes={cut}-"]
    assert sleeps == [1.0]  # one retry, after the default backoff
    assert md5_of(tmp_path / "out" / "Task01_BrainTumour.tar") == want_md5
    assert json.loads((task / "source.json").read_text())["md5"] == want_md5


def test_failed_download_leaves_only_part_and_next_run_resumes_it(
    tmp_path: Path, server: FakeServer, good_tar: Path
) -> None:
    server.payload = good_tar.read_bytes()
    cut = 10_000
    server.cut_after = cut
    dest = tmp_path / "dl" / "file.tar"
    part = tmp_path / "dl" / "file.tar.part"

    with pytest.raises(DownloadError, match="after 1 attempt") as info:
        download_file(server.url, dest, retries=0, progress=False)
    assert server.url in str(info.value)
    assert not dest.exists()
    assert part.stat().st_size == cut

    # A later process picks the .part up.
    assert download_file(server.url, dest, retries=0, progress=False) == dest
    assert server.ranges == [None, f"bytes={cut}-"]
    assert dest.read_bytes() == server.payload
    assert not part.exists()


def test_416_on_a_complete_part_means_done(tmp_path: Path, server: FakeServer) -> None:
    server.payload = _bytes(7, 5_000)
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(server.payload)

    download_file(server.url, dest, retries=0, progress=False)

    assert server.ranges == ["bytes=5000-"]
    assert dest.read_bytes() == server.payload
    assert not (tmp_path / "file.bin.part").exists()


def test_200_answer_to_range_restarts_from_zero(tmp_path: Path, server: FakeServer) -> None:
    server.payload = _bytes(8, 5_000)
    server.honour_range = False
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(b"stale bytes from another file")

    download_file(server.url, dest, retries=0, progress=False)

    assert server.ranges == ["bytes=29-"]
    assert dest.read_bytes() == server.payload


def test_transient_server_errors_are_retried_with_growing_backoff(
    tmp_path: Path, server: FakeServer, sleeps: list[float]
) -> None:
    server.payload = _bytes(9, 3_000)
    server.fail_with = [503, 503, 500]
    dest = tmp_path / "file.bin"

    download_file(server.url, dest, retries=3, backoff_seconds=0.5, progress=False)

    assert sleeps == [0.5, 1.0, 2.0]
    assert len(server.ranges) == 4
    assert dest.read_bytes() == server.payload


def test_404_fails_at_once_naming_the_url(tmp_path: Path, server: FakeServer) -> None:
    dest = tmp_path / "missing.tar"
    url = server.base + "/nope.tar"

    with pytest.raises(DownloadError, match="HTTP 404") as info:
        download_file(url, dest, retries=3, backoff_seconds=0.0, progress=False)

    assert url in str(info.value)
    assert len(server.ranges) == 1  # retrying cannot make a missing file appear
    assert list(tmp_path.iterdir()) == []


def test_unreachable_server_fails_after_retries_naming_the_url(
    tmp_path: Path, sleeps: list[float]
) -> None:
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/Task01_BrainTumour.tar"

    with pytest.raises(DownloadError, match="after 3 attempt") as info:
        download_file(url, tmp_path / "x.tar", retries=2, backoff_seconds=0.25, progress=False)

    assert url in str(info.value)
    assert sleeps == [0.25, 0.5]
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- 3. checksum


def test_wrong_md5_is_refused_and_quarantined(
    tmp_path: Path, server: FakeServer, good_tar: Path
) -> None:
    server.payload = good_tar.read_bytes()
    actual = md5_bytes(server.payload)
    wrong = "0" * 32
    out = tmp_path / "out"

    with pytest.raises(DownloadError) as info:
        fetch_msd(out, url=server.url, md5=wrong, progress=False)

    message = str(info.value)
    assert wrong in message and actual in message
    assert "\n" not in message
    assert not (out / TASK_DIRNAME).exists()
    assert not (out / "Task01_BrainTumour.tar").exists()
    assert (out / "Task01_BrainTumour.tar.bad").read_bytes() == server.payload

    # The rerun must not reuse the bad file: it downloads again.
    fetch_msd(out, url=server.url, md5=actual, progress=False)
    assert server.ranges == [None, None]


def test_wrong_md5_of_user_archive_does_not_rename_it(tmp_path: Path, good_tar: Path) -> None:
    with pytest.raises(DownloadError, match="expected " + "f" * 32):
        fetch_msd(tmp_path / "out", md5="f" * 32, archive=good_tar, progress=False)
    assert good_tar.is_file()
    assert not (tmp_path / "out" / TASK_DIRNAME).exists()


def test_md5_helpers(tmp_path: Path) -> None:
    data = _bytes(4, 3_000_001)
    path = tmp_path / "blob"
    path.write_bytes(data)

    assert md5_of(path, chunk_size=4096) == md5_bytes(data)
    verify_md5(path, md5_bytes(data).upper())  # case-insensitive; must not raise
    assert path.exists()
    with pytest.raises(DownloadError, match="blob"):
        verify_md5(path, "a" * 32)
    assert not path.exists()
    assert (tmp_path / "blob.bad").read_bytes() == data


# --------------------------------------------------------------------------- 4/5. unsafe tars


def _assert_nothing_written(tmp_path: Path, out: Path) -> None:
    assert not out.exists() or list(out.iterdir()) == []
    assert [p for p in tmp_path.rglob("*evil*") if p.name != "evil.tar"] == []


def test_parent_traversal_member_is_refused(tmp_path: Path) -> None:
    evil = build_tar(tmp_path / "evil.tar", extra=[("../evil.txt", b"pwned")])
    out = tmp_path / "a" / "out"

    with pytest.raises(DownloadError, match=r"'\.\./evil\.txt'"):
        fetch_msd(out, md5=None, archive=evil, progress=False)

    _assert_nothing_written(tmp_path, out)


def test_absolute_member_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "abs-evil.txt"
    evil = build_tar(tmp_path / "evil.tar", extra=[(str(target), b"pwned")])
    out = tmp_path / "out"

    with pytest.raises(DownloadError, match="absolute path") as info:
        extract_archive(evil, out, progress=False)

    assert str(target) in str(info.value)
    _assert_nothing_written(tmp_path, out)


@pytest.mark.parametrize("link_target", ["/etc/passwd", "../../../../evil-outside"])
def test_symlink_leaving_the_target_is_refused(tmp_path: Path, link_target: str) -> None:
    evil = tmp_path / "evil.tar"
    build_tar(evil)
    with tarfile.open(evil, "a") as tar:
        _add_symlink(tar, f"{TASK_DIRNAME}/imagesTr/link.nii.gz", link_target)
    out = tmp_path / "out"

    with pytest.raises(DownloadError, match=f"'{TASK_DIRNAME}/imagesTr/link.nii.gz'"):
        extract_archive(evil, out, progress=False)

    assert list(out.iterdir()) == []


def test_archive_without_dataset_json_is_refused(tmp_path: Path) -> None:
    tar = build_tar(tmp_path / "other.tar", with_dataset=False)
    out = tmp_path / "out"

    with pytest.raises(DownloadError, match=f"{TASK_DIRNAME}/dataset.json"):
        extract_archive(tar, out, progress=False)

    assert list(out.iterdir()) == []


def test_extract_never_overwrites_an_existing_task_dir(tmp_path: Path, good_tar: Path) -> None:
    keep = tmp_path / "out" / TASK_DIRNAME / "mine.txt"
    keep.parent.mkdir(parents=True)
    keep.write_text("user data")

    with pytest.raises(DownloadError, match="already exists"):
        extract_archive(good_tar, tmp_path / "out", progress=False)

    assert _files_under(keep.parent) == {"mine.txt": b"user data"}


# --------------------------------------------------------------------------- 5. offline


def test_user_archive_makes_no_network_request(
    tmp_path: Path, server: FakeServer, good_tar: Path
) -> None:
    want_md5 = md5_of(good_tar)
    out = tmp_path / "out"

    task = fetch_msd(out, url=server.url, md5=want_md5, archive=good_tar, progress=False)

    assert server.ranges == []
    assert json.loads((task / "source.json").read_text()) == {
        "kind": "msd",
        "url": None,
        "archive": str(good_tar.resolve()),
        "md5": want_md5,
    }
    assert not (out / "Task01_BrainTumour.tar").exists()
    files = _files_under(task)
    del files["source.json"]
    assert files == DATASET_FILES


def test_missing_user_archive_is_reported(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="nowhere.tar"):
        fetch_msd(tmp_path / "out", archive=tmp_path / "nowhere.tar", progress=False)
