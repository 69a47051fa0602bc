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


def test_write_errors_are_one_line_and_keep_the_old_file(tmp_path, monkeypatch):
    import errno

    from vreid.errors import VreidError

    path = atomic_write_bytes(tmp_path / "c.bin", b"old")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(VreidError, match=r"c.bin: cannot write \(No space left on device\)"):
        atomic_write_bytes(path, b"new" * 1000)
    monkeypatch.undo()
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["c.bin"]
    with pytest.raises(VreidError, match="cannot write"):  # the folder is a file
        atomic_write_bytes(path / "inside.bin", b"x")


def test_the_folder_is_synced_after_the_rename(tmp_path, monkeypatch):
    import stat

    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    atomic_write_bytes(tmp_path / "d.bin", b"data")
    assert synced == [False, True]  # the file's data first, then the folder holding the new name


def test_temporaries_of_killed_writers_are_removed_by_the_next_write(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    target = tmp_path / "out" / "last.pth"
    writer = ("import os, time, vreid.fileio as f\n"
              "os.replace = lambda *a: time.sleep(600)  # killed here: after the data, before the rename\n"
              f"f.atomic_write_bytes({str(target)!r}, bytes(1 << 20))\n")
    proc = subprocess.Popen([sys.executable, "-c", writer])
    deadline = time.time() + 60
    while not list(target.parent.glob(".last.pth.*.tmp")) and time.time() < deadline:
        time.sleep(0.05)
    tmp_file = list(target.parent.glob(".last.pth.*.tmp"))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(tmp_file) == 1 and tmp_file[0].stat().st_size > 0  # left behind by the killed writer
    mine = target.parent / f".other.vreid-tmp.{os.getpid()}.x.tmp"  # a live process's write in progress
    mine.write_bytes(b"busy")
    atomic_write_bytes(target.parent / "other.txt", b"next save")
    assert not tmp_file[0].exists() and mine.exists()
    assert sorted(p.name for p in target.parent.iterdir()) == [mine.name, "other.txt"]
