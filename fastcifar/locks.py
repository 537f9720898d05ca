"""One writer per folder: an exclusive lock a command holds on its output folder for its whole life.

Every command that writes a run, study, data or profile folder enters :func:`hold_folder` first.
The lock is an exclusive, non-blocking ``flock`` on ``<folder>/.lock`` (the primitive
:mod:`fastcifar.atomic` uses for temporaries): the kernel drops it when its holder exits for any
reason, SIGKILL and a power cut included, so a lock is never left behind and no pid or clock is
trusted to tell a live holder from a dead one. The file holds the holder's record — pid, host,
command, command line, start time — which a refused second writer names in its one-line error. A
holder that ends normally removes the file (and the folder, when it created it and left it empty);
one that was killed leaves it, unlocked, for the next holder to reuse. Removing is safe because a
new holder checks, once it has the lock, that the file it locked is still the one at the path.

Across machines: on Linux, ``flock`` on NFS is carried out as a POSIX byte-range lock by the NFS
client (NFSv4 and NFSv3 with the NLM lock service), so two machines writing one shared folder
exclude each other where the server supports locking. It does **not** hold across machines on NFS
mounted with ``nolock`` / ``local_lock=all`` or ``local_lock=flock``, on Lustre mounted with
``localflock`` (or without ``flock``, where the call fails and the command says so), on CIFS/SMB
mounts, or on FUSE file systems without lock support (sshfs, most object-store mounts): there each
machine only sees its own holders, so never point two machines at one folder on such storage.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastcifar.atomic import try_lock
from fastcifar.errors import UserError

__all__ = ["LOCK_NAME", "FolderInUse", "hold_folder", "holder", "is_held", "remove_lock_file"]

LOCK_NAME = ".lock"
# Folders this process holds (resolved paths), so a nested hold of the same folder is a no-op
# instead of a conflict with itself (flock locks of two open files conflict even in one process).
_HELD: dict[Path, int] = {}
_HELD_LOCK = threading.Lock()
# How long a lock may outlive its exited holder (its forked workers still exiting) before a new
# writer is refused.
EXIT_GRACE_S = 15.0


class FolderInUse(UserError):
    """Another live process holds the folder's lock."""


def holder(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The record of the folder's last (or current) holder; None when there is none or it is unreadable."""
    try:
        text = (Path(folder) / LOCK_NAME).read_text(encoding="utf-8")
        record = json.loads(text)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def describe_holder(record: dict[str, Any] | None) -> str:
    """``pid 123 on host h since 2026-12-02T14:00:00Z (python -m fastcifar.train --out X)``."""
    if not record:
        return "another process (which has not written its record yet)"
    line = str(record.get("argv") or record.get("command") or "?")
    if len(line) > 160:
        line = line[:157] + "..."
    return f"pid {record.get('pid', '?')} on host {record.get('host', '?')} since {record.get('started', '?')} ({line})"


def is_held(folder: str | os.PathLike) -> bool:
    """Whether a live process (this one included) holds the folder's lock."""
    folder = Path(folder)
    with _HELD_LOCK:
        if folder.resolve() in _HELD:
            return True
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return False
    try:
        return not try_lock(fd)
    finally:
        os.close(fd)


def _record(command: str) -> bytes:
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "argv": " ".join([Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python", *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return (json.dumps(record) + "\n").encode()


@contextlib.contextmanager
def hold_folder(folder: str | os.PathLike, command: str) -> Iterator[Path]:
    """Hold ``folder`` (created when missing) exclusively for the block; yield it as a Path.

    ``command`` names the holder in the record (e.g. ``"fastcifar.train"``). A second writer —
    another process, on this machine or (see the module doc) another one — gets
    :class:`FolderInUse` (a UserError: one line naming the holder) at once; nothing waits. Nested
    holds of one folder in one process are allowed (the outer one keeps the lock). At the end the
    lock file goes, and the folder too when this call created it and nothing was written there.
    """
    folder = Path(folder)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        key = folder.resolve()
    except OSError as err:
        raise UserError(f"cannot create {folder}: {err.strerror or err}; pass a writable folder") from None
    with _HELD_LOCK:
        if key in _HELD:
            _HELD[key] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield folder
        finally:
            with _HELD_LOCK:
                _HELD[key] -= 1
        return
    path = folder / LOCK_NAME
    fd = _lock(folder, path)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, _record(command), 0)
        with _HELD_LOCK:
            _HELD[key] = 1
        try:
            yield folder
        finally:
            with _HELD_LOCK:
                _HELD.pop(key, None)
            path.unlink(missing_ok=True)  # still locked: a process waiting on this file sees it go (see _lock)
            if created:
                with contextlib.suppress(OSError):  # not empty: the command's results stay
                    folder.rmdir()
    finally:
        os.close(fd)  # releases the lock


def _lock(folder: Path, path: Path) -> int:
    """Open ``path`` and take its lock; the open descriptor. FolderInUse when a live process holds it.

    After locking, the file must still be the one at ``path``: a holder that ended may have removed
    it between our open and our lock, and its successor would lock a new file of the same name.
    """
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise UserError(f"cannot write {path}: {err.strerror or err}; pass a writable folder") from None
        try:
            locked = try_lock(fd)
        except OSError as err:  # e.g. ENOLCK: the file system offers no locks
            os.close(fd)
            reason = "the file system offers no locks" if err.errno == errno.ENOLCK else (err.strerror or str(err))
            raise UserError(
                f"cannot lock {path}: {reason}; use a local folder or one on storage with lock support"
            ) from None
        if not locked:
            os.close(fd)
            if _holder_exited(folder, time.monotonic() + EXIT_GRACE_S):
                continue
            raise FolderInUse(
                f"{folder} is in use by {describe_holder(holder(folder))}; "
                "wait for it to finish or stop it, or pass another folder"
            )
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # removed by the previous holder meanwhile: lock the current file instead


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def _holder_exited(folder: Path, deadline: float) -> bool:
    """Whether a lock held after its recorded holder exited is released before ``deadline``.

    Forked children (DataLoader or FFCV writer workers) share their parent's open lock file: after a
    ``kill -9`` of the holder they keep the lock until they notice and exit, a few seconds later.
    Only a holder on this host whose pid is gone is waited for; a live one is refused at once.
    """
    record = holder(folder) or {}
    pid = record.get("pid")
    if record.get("host") != socket.gethostname() or not isinstance(pid, int) or _pid_alive(pid):
        return False
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if not is_held(folder):
            return True
    return False


def remove_lock_file(folder: str | os.PathLike) -> None:
    """Delete the lock file of a folder this process holds and is about to remove (empty otherwise)."""
    (Path(folder) / LOCK_NAME).unlink(missing_ok=True)
