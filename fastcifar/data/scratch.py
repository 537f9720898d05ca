"""Temporary files and folders of ``prepare`` that a killed run leaves behind, and their removal.

Each temporary file or folder is held under an exclusive ``flock`` while it is in use. The kernel
drops the lock when its holder exits for any reason, SIGKILL included, so a later run can tell a
leftover (lock free) from one another process is still writing (lock held) without trusting pids
or clocks. ``remove_stale`` deletes the leftovers matching the patterns ``prepare`` owns.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["held", "locked_tempdir", "remove_stale"]

# Temporary files of fastcifar.atomic (meta.json) carry no lock; they live milliseconds, so one
# untouched for this long belongs to a run that died.
UNLOCKED_STALE_AFTER_S = 600.0


@contextlib.contextmanager
def held(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (a file or a folder) for the duration of the block."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def locked_tempdir(parent: str | os.PathLike, prefix: str) -> Iterator[str]:
    """``tempfile.TemporaryDirectory`` whose folder is locked while in use (see module doc)."""
    with tempfile.TemporaryDirectory(dir=parent, prefix=prefix) as folder, held(folder):
        yield folder


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def _remove_if_unlocked(path: Path) -> bool:
    """Remove ``path`` if no process holds its lock; the lock is held while removing."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False  # vanished or unreadable: leave it alone
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False  # in use
            raise
        _remove(path)
        return True
    finally:
        os.close(fd)


def remove_stale(folder: str | os.PathLike, locked: tuple[str, ...], unlocked: tuple[str, ...] = ()) -> list[Path]:
    """Remove leftovers in ``folder``: ``locked`` glob patterns whose lock is free, and ``unlocked``
    patterns untouched for ``UNLOCKED_STALE_AFTER_S``. Returns what was removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    now = time.time()
    candidates = [(p, True) for pattern in locked for p in folder.glob(pattern)]
    candidates += [(p, False) for pattern in unlocked for p in folder.glob(pattern)]
    for path, lockable in candidates:
        try:
            if path.is_symlink():
                continue  # never something we wrote
            if lockable:
                if _remove_if_unlocked(path):
                    removed.append(path)
            elif now - path.stat().st_mtime > UNLOCKED_STALE_AFTER_S:
                _remove(path)
                removed.append(path)
        except FileNotFoundError:  # removed meanwhile by its owner
            continue
    return removed
