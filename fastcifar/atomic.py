"""Atomic file writes: a temporary file in the same folder, flushed to disk, then a rename.

A reader (or a later run) sees the old file or the whole new one, never a half-written one, even
when the writer is interrupted. The temporary file is ``.<name>.<random>.tmp`` beside the target.

Every temporary file or folder made here is held under an exclusive ``flock`` while in use. The
kernel drops the lock when its holder exits for any reason, SIGKILL included, so a later run tells
a leftover (lock free) from one that another process is still writing (lock held) without trusting
pids or clocks: :func:`remove_stale` deletes only the former.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "folder_write_problem",
    "held",
    "locked_tempdir",
    "read_json",
    "remove_stale",
    "remove_stale_temporaries",
    "try_lock",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]


def _fsync(fd: int) -> None:
    """Force written data to the disk (one place, so tests can make it fail like a full disk)."""
    os.fsync(fd)


def try_lock(fd: int) -> bool:
    """Take an exclusive ``flock`` on the open file ``fd`` without waiting; False when another holds it.

    The lock lasts until ``fd`` is closed (or its process ends, however it ends).
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True


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
    """``tempfile.TemporaryDirectory`` whose folder is locked while in use (see the module doc)."""
    with tempfile.TemporaryDirectory(dir=parent, prefix=prefix) as folder, held(folder):
        yield folder


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a locked temporary path beside ``path``; on a clean exit it is synced and renamed to ``path``.

    The caller writes the temporary file by name (e.g. ``fig.savefig(tmp, format="png")``). On any
    exception (a full disk included) the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    tmp = Path(name)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held until os.close(fd): marks the file as in use
        yield tmp
        with open(tmp, "rb+") as handle:
            _fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` (mode 0644) through a synced temporary file and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` (UTF-8, mode 0644) through a synced temporary file and a rename."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as indented JSON (non-JSON values through ``str``) with a final newline, atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def folder_write_problem(folder: str | os.PathLike) -> str | None:
    """None when ``folder`` exists (or can be made) and takes a new file; else why not, in a few words.

    Checked before long work that ends in writing there, so that the mistake costs no time. The probe
    is a real file (root writes into a chmod 0555 folder; a read-only mount refuses even root).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        return "it is a file, not a folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        return err.strerror or str(err)
    return None


def read_json(path: str | os.PathLike, remedy: str) -> Any:
    """The JSON content of ``path``; UserError naming the file and ``remedy`` when it cannot be parsed.

    Files written here are whole or absent, but a copy cut short, a full disk outside this code or a
    hand edit can still leave one truncated: that is a user's problem to fix, not a traceback.
    """
    from fastcifar.errors import UserError

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is damaged (not valid JSON: {err}); {remedy}") from None


def _remove_if_unlocked(path: Path) -> bool:
    """Remove ``path`` (file or folder) if no process holds its lock; the lock is held while removing."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False  # vanished or unreadable: leave it alone
    try:
        if not try_lock(fd):
            return False  # in use
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        return True
    finally:
        os.close(fd)


def remove_stale(folder: str | os.PathLike, patterns: Iterable[str]) -> list[Path]:
    """Remove what killed writers left in ``folder``: entries matching the glob ``patterns`` whose
    lock is free (a live writer's are kept). Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for pattern in patterns:
        for path in folder.glob(pattern):
            try:
                if not path.is_symlink() and _remove_if_unlocked(path):  # a link is never something we wrote
                    removed.append(path)
            except FileNotFoundError:  # removed meanwhile by its owner
                continue
    return removed


def remove_stale_temporaries(folder: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """Delete the temporary files that killed atomic writes of ``names`` left in ``folder``; return them."""
    return remove_stale(folder, [f".{name}.*.tmp" for name in names])
