"""Atomic writes: the target changes only when the whole write succeeded."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from resnetkit.core.errors import OutputError
from resnetkit.core.fileio import atomic_write, check_writable, write_text_atomic


def test_atomic_write_replaces_the_file_with_the_usual_permissions(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "result.json"
    write_text_atomic(target, "first")
    write_text_atomic(target, "second")
    assert target.read_text() == "second"
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # not mkstemp's owner-only 0600
    assert os.listdir(target.parent) == ["result.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    target.write_bytes(b"old weights")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_write(target) as handle:
            handle.write(b"half of the new wei")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old weights"
    assert os.listdir(tmp_path) == ["model.pt"]


def test_paths_that_cannot_be_written_are_one_clear_error_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match=f"Cannot write {tmp_path}: it is a folder"):
        with atomic_write(tmp_path):
            pytest.fail("the block ran")
    with pytest.raises(OutputError, match="Cannot write /proc/resnetkit/out.json: .*Pick another output path"):
        with atomic_write("/proc/resnetkit/out.json"):
            pytest.fail("the block ran")
    (tmp_path / "a-file").write_text("keep")
    with pytest.raises(OutputError, match="Cannot write .*a-file/out.json"):
        check_writable(tmp_path / "a-file" / "out.json")
    assert check_writable(tmp_path / "new" / "out.json") == tmp_path / "new" / "out.json"
    assert sorted(os.listdir(tmp_path)) == ["a-file"]  # the checks wrote nothing and made no folder
