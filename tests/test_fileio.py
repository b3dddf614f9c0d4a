"""Whole-or-nothing writes: the temp-then-rename helper every stage output goes through."""

from __future__ import annotations

import os
import stat

import pytest

from distmis.errors import ContractError
from distmis.fileio import atomic_path, read_json, write_json


def test_success_renames_onto_the_target_and_leaves_no_temp(tmp_path):
    target = tmp_path / "deep" / "out.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_failure_keeps_the_old_target_and_removes_the_temp(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("stage failed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_outputs_get_the_mode_of_any_new_file_not_owner_only(tmp_path, umask):
    previous = os.umask(umask)
    try:
        write_json(tmp_path / "summary.json", {"a": 1})
        (tmp_path / "plain.txt").write_text("x")  # what open() would have made
    finally:
        os.umask(previous)
    mode = stat.S_IMODE((tmp_path / "summary.json").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == 0o666 & ~umask


def test_read_json_names_the_file_and_the_rule(tmp_path):
    with pytest.raises(ContractError, match="missing.json is missing .* rule x"):
        read_json(tmp_path / "missing.json", "rule x")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ContractError, match="bad.json is not valid JSON .* rerun rule x"):
        read_json(tmp_path / "bad.json", "rule x")


def test_staged_dirs_replace_their_targets_whole_or_not_at_all(tmp_path):
    from distmis.fileio import staged_dirs

    target = tmp_path / "predictions"
    target.mkdir()
    (target / "old_case.nii.gz").write_text("old")
    with pytest.raises(RuntimeError), staged_dirs(target) as (staging,):
        (staging / "new_case.nii.gz").write_text("new")
        raise RuntimeError("case 2 failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions"]  # no staging left
    assert [p.name for p in target.iterdir()] == ["old_case.nii.gz"]
    with staged_dirs(target) as (staging,):
        (staging / "new_case.nii.gz").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new_case.nii.gz"]  # never merged
