"""Writing files so that a crash never leaves a half-written one behind.

A write goes to a temporary file in the target's folder (named ``.NAME.vreid-tmp.PID.*``), is fsynced, renamed
over the target, and the folder is fsynced too, so that after a power cut the folder holds the old or the new
file, never neither. A process killed mid-write leaves its temporary file; the next write into that folder
removes the ones whose process is gone.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from vreid.errors import VreidError

log = logging.getLogger(__name__)

TEMP_MARK = ".vreid-tmp."  # .NAME.vreid-tmp.PID.RANDOM.tmp: the writer's process id says when it is stale
_swept: set[Path] = set()  # folders already cleared of stale temporary files by this process


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but is not ours (EPERM), or cannot tell: keep its file
        return True
    return True


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files that writers killed mid-write left in ``folder`` (their process is gone)."""
    removed = []
    for tmp in Path(folder).glob(f".*{TEMP_MARK}*.tmp"):
        pid = tmp.name.split(TEMP_MARK, 1)[1].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    if removed:
        log.info("removed %d temporary files of interrupted writes in %s", len(removed), folder)
    return removed


def fsync_dir(folder: str | Path) -> None:
    """Make a rename in ``folder`` durable (POSIX: the directory entry is only safe once the folder is synced)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # a platform without directory handles (Windows): the rename is all there is
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a folder; the data itself is already synced
        pass
    finally:
        os.close(fd)


def _cannot_write(path: Path, exc: OSError) -> VreidError:
    return VreidError(f"{path}: cannot write ({exc.strerror or exc}); an existing file there is unchanged")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write to a temporary file in the same folder, fsync, rename over ``path``, fsync the folder.

    A full disk or a missing permission is a :class:`VreidError` naming ``path`` (the old file stays).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.parent.resolve() not in _swept:
            remove_stale_temporaries(path.parent)
            _swept.add(path.parent.resolve())
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARK}{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions of a new file
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _cannot_write(path, exc) from None
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_npy(path: str | Path, array) -> Path:
    """``np.save`` through :func:`atomic_write_bytes` (distance matrices, features)."""
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array)
    return atomic_write_bytes(path, buffer.getvalue())


def display_text(text: str) -> str:
    """``text`` as valid Unicode: bytes of a path that are not UTF-8 (kept by Python as surrogate escapes) are
    shown as ``\\xNN``, so JSON answers and printed tables never fail on such a file name."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
