"""Atomic file writes: a temporary file in the same folder, flushed to disk, then a rename.

A reader (or a later run) sees the old file or the whole new one, never a half-written one, even
when the writer is interrupted. The temporary file is ``.<name>.<random>.tmp`` beside the target;
a writer killed with SIGKILL leaves it behind, and :func:`remove_stale_temporaries` (called by the
next run that owns the folder) deletes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "remove_stale_temporaries", "write_bytes_atomic", "write_json_atomic", "write_text_atomic"]


def _fsync(fd: int) -> None:
    """Force written data to the disk (one place, so tests can make it fail like a full disk)."""
    os.fsync(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit it is synced and renamed to ``path``.

    The caller writes the temporary file by name (e.g. ``fig.savefig(tmp, format="png")``). On any
    exception (a full disk included) the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            _fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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


def remove_stale_temporaries(folder: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """Delete the temporary files that atomic writes of ``names`` left in ``folder``; return them.

    Only call this from the one process that owns ``folder`` (a live writer's file would go too).
    """
    removed = []
    folder = Path(folder)
    for name in names:
        for stale in folder.glob(f".{name}.*.tmp"):
            stale.unlink(missing_ok=True)
            removed.append(stale)
    return removed
