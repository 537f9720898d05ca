"""Content hashes of betons: computed when written, verified before use, verification cached.

``prepare`` records ``blake2b`` of each beton in ``meta.json`` (``hashes``). Before a beton is
trusted (``prepare`` finding "nothing to do", a loader opening it) :func:`verify` re-hashes it and
compares. Hashing reads the whole file (CIFAR-100's train beton: ~150 MB, measured in
bench/prepare.py); a success is remembered in ``.verified.json`` next to the beton, keyed by the
file's size, mtime and inode, so a second open of an unchanged file costs one ``stat``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from fastcifar.atomic import write_json_atomic
from fastcifar.errors import UserError

__all__ = ["CACHE_NAME", "HASH_NAME", "content_hash", "remember", "verify"]

HASH_NAME = "blake2b"
CACHE_NAME = ".verified.json"
_CHUNK = 1 << 22


def content_hash(path: str | os.PathLike) -> str:
    """``"blake2b:<hex>"`` of the file's bytes (256-bit digest), read in 4 MiB chunks."""
    digest = hashlib.blake2b(digest_size=32)
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while count := f.readinto(buffer):
            digest.update(view[:count])
    return f"{HASH_NAME}:{digest.hexdigest()}"


def _stamp(path: Path) -> dict[str, int]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ino": stat.st_ino}


def _read_cache(folder: Path) -> dict:
    try:
        cache = json.loads((folder / CACHE_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def remember(path: str | os.PathLike, digest: str) -> None:
    """Record that ``path``, as it is now, has content hash ``digest`` (best effort: a read-only
    folder just means the next open hashes again)."""
    path = Path(path)
    cache = _read_cache(path.parent)
    cache[path.name] = {**_stamp(path), "hash": digest}
    try:
        write_json_atomic(path.parent / CACHE_NAME, cache)
    except OSError:
        pass


def verify(path: str | os.PathLike, expected: str, rebuild: str) -> None:
    """UserError unless ``path`` hashes to ``expected``; ``rebuild`` is the command named on mismatch.

    Free when the cache says this very file (size, mtime, inode) was verified against ``expected``.
    """
    path = Path(path)
    try:
        entry = _read_cache(path.parent).get(path.name)
        stamp = _stamp(path)
        if isinstance(entry, dict) and entry.get("hash") == expected and {k: entry.get(k) for k in stamp} == stamp:
            return
        actual = content_hash(path)
    except OSError as err:
        raise UserError(f"cannot read {path} ({err.strerror or err}); rebuild it with `{rebuild}`") from None
    if actual != expected:
        raise UserError(
            f"{path} is damaged: its content differs from what was written (hash in meta.json); "
            f"rebuild it with `{rebuild}`"
        )
    remember(path, actual)
