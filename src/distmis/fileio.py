"""Whole-or-nothing file writes: every stage output goes through a temp name and a rename."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    # The only portable way to read the umask is to set it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only on success.

    The temp file lives in the same directory so the final ``os.replace`` is atomic on
    POSIX file systems; on any exception it is removed and ``target`` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    # mkstemp creates the file 0600; an output must get the mode any new file would (0666
    # less the umask), or a group's shared project folder fills with owner-only results.
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(target: str | os.PathLike[str], payload: Any) -> None:
    """Write ``payload`` as indented JSON, atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike[str], made_by: str) -> Any:
    """Read a JSON contract file, raising ContractError that names the file and the rule making it."""
    from distmis.errors import ContractError

    path = Path(path)
    if not path.is_file():
        raise ContractError(f"{path} is missing (it is written by {made_by})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ContractError(f"{path} is not valid JSON ({exc}); rerun {made_by}") from exc


def versioned_fields(payload: Any, expected_format: str, names: set[str]) -> dict[str, Any]:
    """The fields of a ``{"format": ..., <names>}`` JSON artefact, without ``format``; a wrong
    format or a missing or unknown key is a ValueError saying which, never a default."""
    if not isinstance(payload, dict):
        raise ValueError(f"expected a JSON object of format {expected_format!r}")
    keys = names | {"format"}
    if set(payload) != keys or payload["format"] != expected_format:
        raise ValueError(
            f"expected format {expected_format!r}, got {payload.get('format')!r}; "
            f"missing {sorted(keys - set(payload))}, unknown {sorted(set(payload) - keys)}"
        )
    return {k: v for k, v in payload.items() if k != "format"}


@contextlib.contextmanager
def staged_dirs(*targets: Path) -> Iterator[tuple[Path, ...]]:
    """Yield a fresh hidden folder beside each target folder; on success each replaces its target.

    So a rerun never leaves an old case's files behind, and a failed run removes its staging
    folders and leaves the previous outputs as they were.
    """
    staging: list[Path] = []
    try:
        for target in targets:
            staging.append(target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
            staging[-1].mkdir(parents=True)
        yield tuple(staging)
        for folder, target in zip(staging, targets, strict=True):
            if target.exists():
                shutil.rmtree(target)
            os.replace(folder, target)
    except BaseException:
        for folder in staging:
            shutil.rmtree(folder, ignore_errors=True)
        raise
