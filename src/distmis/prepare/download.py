"""Fetch, verify and unpack the Medical Segmentation Decathlon Task01_BrainTumour archive.

The archive is ~7.1 GiB, so the download resumes across dropped connections and across
runs (a ``.part`` file), the checksum is checked before anything is unpacked, and the
archive is unpacked into a staging folder that is renamed into place only when complete:
later stages never see a half-downloaded archive or a half-written dataset.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from tqdm import tqdm

from distmis.errors import DownloadError
from distmis.fileio import write_json

log = logging.getLogger(__name__)

DEFAULT_URL = "https://msd-for-monai.s3-us-west-2.amazonaws.com/Task01_BrainTumour.tar"
DEFAULT_MD5 = "240a19d752f0d9e9101544901065d872"
TASK_DIRNAME = "Task01_BrainTumour"
ARCHIVE_NAME = f"{TASK_DIRNAME}.tar"
SOURCE_NAME = "source.json"

_USER_AGENT = "distmis-download/0.1 (+python-urllib)"
_MAX_BACKOFF_SECONDS = 60.0
# 4xx answers that can clear up by themselves; any other 4xx (404, 403, ...) will not, so
# retrying it only delays the error the user has to act on.
_TRANSIENT_4XX = frozenset({408, 425, 429})
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")
# Indirection so the tests can exercise the retry loop without real waits.
_sleep = time.sleep


class _Interrupted(Exception):
    """The transfer stopped short in a way that a further (resuming) attempt may fix."""


# Everything a flaky network can throw at us; URLError, HTTPError (5xx), timeouts and
# resets are all OSError subclasses, IncompleteRead and RemoteDisconnected are HTTPException.
_RETRYABLE = (OSError, http.client.HTTPException, _Interrupted)


# --------------------------------------------------------------------------- download


def download_file(
    url: str,
    dest: Path,
    *,
    retries: int = 5,
    timeout: float = 60.0,
    chunk_size: int = 1 << 20,
    backoff_seconds: float = 1.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest``, resuming from ``dest.part`` after any interruption.

    A file at ``dest`` is only ever created by renaming a complete ``.part``, so an existing
    ``dest`` is taken as already downloaded. A ``.part`` left by an earlier process is
    resumed too. Raises DownloadError once ``retries`` further attempts have failed, or at
    once for an answer that retrying cannot change (e.g. 404).
    """
    dest = Path(dest)
    if dest.is_file():
        log.info("%s already downloaded; not fetching %s again", dest, url)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _part_path(dest)
    attempts = retries + 1
    last_error: BaseException | None = None
    for attempt in range(1, attempts + 1):
        try:
            _fetch_once(url, part, timeout=timeout, chunk_size=chunk_size, progress=progress)
        except _RETRYABLE as exc:
            last_error = exc
            if attempt == attempts:
                break
            delay = min(backoff_seconds * 2 ** (attempt - 1), _MAX_BACKOFF_SECONDS)
            log.warning(
                "download of %s interrupted (%s); attempt %d of %d in %.1f s",
                url,
                _one_line(exc),
                attempt + 1,
                attempts,
                delay,
            )
            _sleep(delay)
        else:
            os.replace(part, dest)
            log.info("downloaded %s to %s", url, dest)
            return dest
    raise DownloadError(
        f"download of {url} failed after {attempts} attempt(s): {_one_line(last_error)}"
    )


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _fetch_once(url: str, part: Path, *, timeout: float, chunk_size: int, progress: bool) -> None:
    """Bring ``part`` up to the full remote size in one request, or raise."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        _handle_http_error(url, part, offset, exc)
        return
    with response:
        offset, total = _resume_point(url, part, offset, response)
        sink = _open_part(part, "ab" if offset else "wb")
        with sink, _bar(part.name, total, offset, progress) as bar:
            _stream(response, sink, bar, chunk_size, part)
    size = part.stat().st_size
    if total is not None and size != total:
        if size > total:
            # Longer than the remote file: the part cannot be a prefix of it.
            part.unlink()
        raise _Interrupted(f"received {size} of {total} bytes")


def _handle_http_error(url: str, part: Path, offset: int, exc: urllib.error.HTTPError) -> None:
    """Return if ``part`` turns out complete; otherwise raise (retryable or final)."""
    content_range = exc.headers.get("Content-Range") if exc.headers else None
    exc.close()
    if exc.code == 416 and offset:
        _accept_complete_part(url, part, offset, content_range)
        return
    if 400 <= exc.code < 500 and exc.code not in _TRANSIENT_4XX:
        raise DownloadError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from exc
    raise exc


def _accept_complete_part(url: str, part: Path, offset: int, content_range: str | None) -> None:
    """A 416 to ``bytes=offset-`` means the part already holds the whole file, if sizes agree."""
    total = _parse_content_range(content_range)[2]
    if total is None:
        log.warning("%s answered 416 without a size; taking %s as complete", url, part)
        return
    if total != offset:
        part.unlink()
        raise _Interrupted(f"{part.name} holds {offset} bytes but the file has {total}")
    log.info("%s was already complete (%d bytes)", part, offset)


def _resume_point(url: str, part: Path, offset: int, response: Any) -> tuple[int, int | None]:
    """Where this response's body starts in the file, and the file's full size if known."""
    status = getattr(response, "status", None) or 200
    length = _int_or_none(response.headers.get("Content-Length"))
    if status == 206:
        start, _end, total = _parse_content_range(response.headers.get("Content-Range"))
        if start != offset:
            # Appending a body that starts elsewhere would corrupt the part silently.
            part.unlink(missing_ok=True)
            raise _Interrupted(f"{url} resumed at byte {start}, not {offset}; restarting")
        if total is None and length is not None:
            total = offset + length
        return offset, total
    if offset:
        log.warning("%s ignored the Range request; restarting from byte 0", url)
    return 0, length


def _parse_content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    match = _CONTENT_RANGE.fullmatch(value.strip()) if value else None
    if match is None:
        return None, None, None
    start, end, total = (_int_or_none(group) for group in match.groups())
    return start, end, total


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


def _open_part(part: Path, mode: str) -> BinaryIO:
    try:
        return part.open(mode)
    except OSError as exc:
        raise DownloadError(f"cannot write {part}: {exc}") from exc


def _stream(response: Any, sink: BinaryIO, bar: tqdm, chunk_size: int, part: Path) -> None:
    while chunk := response.read(chunk_size):
        try:
            sink.write(chunk)
        except OSError as exc:
            # A full disk or lost permission is not a network hiccup: do not retry it.
            raise DownloadError(f"cannot write {part}: {exc}") from exc
        bar.update(len(chunk))


def _bar(name: str, total: int | None, initial: int, progress: bool) -> tqdm:
    return tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=name,
        disable=not progress,
    )


def _one_line(exc: BaseException | None) -> str:
    if exc is None:
        return "no attempt was made"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --------------------------------------------------------------------------- checksum


def md5_of(path: Path, chunk_size: int = 1 << 20, *, progress: bool = False) -> str:
    """Hex md5 of ``path``, read in chunks so a 7 GiB archive needs no 7 GiB of memory."""
    path = Path(path)
    digest = hashlib.md5(usedforsecurity=False)
    try:
        size = path.stat().st_size
        with path.open("rb") as src, _bar(f"md5 {path.name}", size, 0, progress) as bar:
            while chunk := src.read(chunk_size):
                digest.update(chunk)
                bar.update(len(chunk))
    except OSError as exc:
        raise DownloadError(f"cannot read {path}: {exc}") from exc
    return digest.hexdigest()


def verify_md5(path: Path, expected: str, *, quarantine: bool = True) -> None:
    """Raise DownloadError unless ``path`` has md5 ``expected``.

    With ``quarantine`` (the default) a mismatching file is renamed to ``<name>.bad`` so it
    is never used again and a rerun downloads afresh.
    """
    _check_md5(Path(path), expected, md5_of(path), quarantine=quarantine)


def _check_md5(path: Path, expected: str, actual: str, *, quarantine: bool) -> None:
    expected = expected.strip().lower()
    if actual == expected:
        log.info("%s: md5 %s verified", path, actual)
        return
    message = f"{path}: md5 is {actual}, expected {expected}"
    if quarantine:
        bad = path.with_name(path.name + ".bad")
        os.replace(path, bad)
        message += f"; moved to {bad.name} so a rerun downloads it afresh"
    raise DownloadError(message)


# --------------------------------------------------------------------------- extraction


def extract_archive(archive: Path, out_dir: Path, *, progress: bool = True) -> Path:
    """Unpack ``archive`` and return ``out_dir / TASK_DIRNAME``.

    Members are checked by tarfile's ``data`` filter; any refused member aborts the whole
    extraction and nothing is left behind. macOS junk (basename starting ``.`` or ``_``)
    is skipped. An existing task folder is never overwritten.
    """
    return _extract(Path(archive), Path(out_dir), source=None, progress=progress)


def _extract(
    archive: Path, out_dir: Path, *, source: dict[str, Any] | None, progress: bool
) -> Path:
    task_dir = out_dir / TASK_DIRNAME
    if task_dir.exists():
        raise DownloadError(f"{task_dir} already exists; remove it to unpack {archive} again")
    out_dir.mkdir(parents=True, exist_ok=True)
    # Staging inside out_dir keeps the final rename on one file system, hence atomic.
    staging = Path(tempfile.mkdtemp(prefix=f".{TASK_DIRNAME}.", suffix=".unpacking", dir=out_dir))
    try:
        _unpack(archive, staging, progress)
        staged = staging / TASK_DIRNAME
        if not (staged / "dataset.json").is_file():
            raise DownloadError(f"{archive}: {TASK_DIRNAME}/dataset.json was not unpacked")
        if source is not None:
            # Written before the rename so a task folder in place always says where it came from.
            write_json(staged / SOURCE_NAME, source)
        try:
            staged.rename(task_dir)
        except OSError as exc:
            raise DownloadError(f"cannot move the unpacked dataset to {task_dir}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("unpacked %s into %s", archive, task_dir)
    return task_dir


def _unpack(archive: Path, dest: Path, progress: bool) -> None:
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            _require_dataset_json(archive, members)
            wanted = [member for member in members if not _is_junk(member.name)]
            _refuse_absolute(archive, wanted)
            log.info(
                "%s: %d members, %d junk skipped", archive, len(members), len(members) - len(wanted)
            )
            bar = tqdm(wanted, desc=f"unpack {archive.name}", unit="file", disable=not progress)
            tar.extractall(dest, members=bar, filter="data")
    except tarfile.FilterError as exc:
        name = exc.tarinfo.name if exc.tarinfo is not None else "?"
        raise DownloadError(f"{archive}: refused unsafe member {name!r}: {exc}") from exc
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DownloadError(f"{archive}: cannot unpack: {_one_line(exc)}") from exc


def _is_junk(name: str) -> bool:
    # macOS tar adds AppleDouble "._x" files (and "__MACOSX/") next to the real data.
    return PurePosixPath(name).name.startswith((".", "_"))


def _require_dataset_json(archive: Path, members: Sequence[tarfile.TarInfo]) -> None:
    # Checked before unpacking so a wrong archive fails in seconds, not after 7 GiB of writes.
    wanted = (TASK_DIRNAME, "dataset.json")
    if not any(m.isfile() and PurePosixPath(m.name).parts == wanted for m in members):
        raise DownloadError(f"{archive} has no {TASK_DIRNAME}/dataset.json; is it the MSD archive?")


def _refuse_absolute(archive: Path, members: Sequence[tarfile.TarInfo]) -> None:
    # The data filter would silently strip the leading "/"; the MSD archive never has one,
    # so such a member means this is not the archive we expect.
    for member in members:
        if PurePosixPath(member.name).is_absolute():
            raise DownloadError(f"{archive}: refused member with absolute path {member.name!r}")


# --------------------------------------------------------------------------- whole task


def fetch_msd(
    out_dir: Path,
    *,
    url: str = DEFAULT_URL,
    md5: str | None = DEFAULT_MD5,
    archive: Path | None = None,
    progress: bool = True,
) -> Path:
    """Make ``out_dir / TASK_DIRNAME`` hold the unpacked MSD brain-tumour task; return it.

    With ``archive`` (a tar already on disk, e.g. on a compute node without internet) the
    network is not touched; otherwise ``url`` is downloaded to ``out_dir/ARCHIVE_NAME``.
    The md5 is checked before unpacking, and ``source.json`` in the task folder records the
    provenance. A task folder whose ``source.json`` matches is reused as is.
    """
    out_dir = Path(out_dir)
    task_dir = out_dir / TASK_DIRNAME
    user_archive = archive is not None
    if archive is not None:
        archive = Path(archive)
        if not archive.is_file():
            raise DownloadError(f"archive {archive} does not exist")
    expected = md5.strip().lower() if md5 else None
    actual: str | None = None
    if expected is None and archive is not None:
        # Without a given md5 the user's archive itself identifies the dataset.
        actual = md5_of(archive, progress=progress)
    if _reusable(task_dir, md5=expected or actual, url=None if user_archive else url):
        log.info("%s is up to date; nothing to fetch", task_dir)
        return task_dir
    if archive is None:
        archive = download_file(url, out_dir / ARCHIVE_NAME, progress=progress)
    if actual is None:
        actual = md5_of(archive, progress=progress)
    if expected is not None:
        # Never rename a file the user handed us; only our own download is quarantined.
        _check_md5(archive, expected, actual, quarantine=not user_archive)
    else:
        log.warning("no md5 given; unpacking %s unverified (md5 %s)", archive, actual)
    source = {
        "kind": "msd",
        "url": None if user_archive else url,
        "archive": str(archive.resolve()),
        "md5": actual,
    }
    return _extract(archive, out_dir, source=source, progress=progress)


def _reusable(task_dir: Path, *, md5: str | None, url: str | None) -> bool:
    """True if ``task_dir`` came from the wanted archive; DownloadError if it came from another."""
    if not task_dir.exists():
        return False
    recorded = _read_source(task_dir / SOURCE_NAME)
    if md5 is not None:
        if recorded.get("md5") == md5:
            return True
        found = f"md5 {recorded.get('md5')}" if recorded else f"no valid {SOURCE_NAME}"
    else:
        if url is not None and recorded.get("url") == url:
            return True
        found = f"url {recorded.get('url')}" if recorded else f"no valid {SOURCE_NAME}"
    want = f"md5 {md5}" if md5 is not None else f"url {url}"
    # Checked before any download so a 7 GiB transfer is not wasted on a folder we won't replace.
    raise DownloadError(f"{task_dir} exists with {found}, want {want}; remove it to fetch again")


def _read_source(path: Path) -> dict[str, Any]:
    try:
        payload = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return payload if isinstance(payload, dict) else {}
