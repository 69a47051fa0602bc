"""Atomic writes: all or nothing, and files readable like any other new file."""

from __future__ import annotations

import os

import numpy as np
import pytest

from vreid.fileio import atomic_save_npy, atomic_write_bytes, atomic_write_text


def test_atomic_writes_replace_whole_files_with_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "sub" / "a.txt", "first")
        atomic_write_text(path, "second")
        assert path.read_text() == "second"
        assert path.stat().st_mode & 0o777 == 0o644  # mkstemp's 0600 would hide results from other users
        arr = atomic_save_npy(tmp_path / "d.npy", np.arange(5))
        assert np.load(arr).tolist() == [0, 1, 2, 3, 4] and arr.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["a.txt"]  # no temporary file left


def test_failed_write_leaves_the_old_file(tmp_path):
    path = atomic_write_bytes(tmp_path / "b.bin", b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(path, object())  # type: ignore[arg-type]
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["b.bin"]
