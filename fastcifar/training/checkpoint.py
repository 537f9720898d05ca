"""Training checkpoints: atomic, hashed, plain data only, complete enough to resume bit-for-bit.

A checkpoint holds the model, optimizer, scheduler and grad-scaler states, the random-number
generator states (Python, NumPy, torch CPU, every CUDA device), the position in the run
(``epoch`` = epochs completed, ``step`` = batches already done in the next epoch, non-zero only
after Ctrl-C), the per-epoch history and the run's config.

File layout: one header line ``FASTCIFAR-CHECKPOINT 2 blake2b <hex digest>\\n`` followed by the
bytes of ``torch.save``. Loading checks the digest first (a file with changed bytes is refused),
then unpickles with ``torch.load(weights_only=True)``: only tensors and plain Python values are
rebuilt, so a checkpoint from elsewhere cannot run code. RNG states are stored as tensors and
plain lists for that reason. Saving keeps the previous checkpoint as ``checkpoint.prev.pt``.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastcifar.atomic import atomic_path, write_bytes_atomic
from fastcifar.errors import UserError

CHECKPOINT_NAME = "checkpoint.pt"
PREVIOUS_NAME = "checkpoint.prev.pt"
FORMAT_VERSION = 2
_MAGIC = b"FASTCIFAR-CHECKPOINT"
_HEADER_LIMIT = 200  # bytes; the header line is ~100


class DamagedCheckpoint(UserError):
    """The file is not an intact checkpoint written by :func:`save_checkpoint`."""


def checkpoint_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINT_NAME


def previous_path(path: str | os.PathLike) -> Path:
    """Where :func:`save_checkpoint` keeps the checkpoint it replaced."""
    return Path(path).with_name(PREVIOUS_NAME)


def capture_rng_state() -> dict[str, Any]:
    """Every generator a training step may draw from, as tensors and plain Python values."""
    numpy_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),  # (version, tuple of 625 ints, gauss or None)
        "numpy": {
            "key": numpy_state["state"]["key"].tolist(),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`; CUDA states are restored only where CUDA is in use."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": np.asarray(numpy_state["key"], dtype=np.uint32), "pos": numpy_state["pos"]},
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda")
    if cuda_states is not None and torch.cuda.is_available():
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def encode(state: dict[str, Any]) -> bytes:
    """The bytes :func:`save_checkpoint` writes for ``state``: header line + ``torch.save`` data."""
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state}, buffer)
    return frame(buffer.getvalue())


def frame(payload: bytes) -> bytes:
    """Prefix serialised ``payload`` with the header line carrying its digest."""
    digest = hashlib.blake2b(payload, digest_size=32).hexdigest()
    return b"%s %d blake2b %s\n" % (_MAGIC, FORMAT_VERSION, digest.encode()) + payload


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any], keep_previous: bool = True) -> Path:
    """Write ``state`` to ``path`` atomically (synced temporary file, then rename).

    With ``keep_previous`` the checkpoint being replaced becomes ``checkpoint.prev.pt`` first, so
    one good checkpoint remains if the new one is later damaged. A crash at any point leaves a
    complete ``path`` (old or new). Raises OSError (e.g. a full disk) with ``path`` untouched.
    """
    path = Path(path)
    data = encode(state)
    if keep_previous and path.is_file():
        previous = previous_path(path)
        with atomic_path(previous) as tmp:
            tmp.unlink()
            try:
                os.link(path, tmp)  # no copy: the old file simply gets a second name
            except OSError:
                shutil.copyfile(path, tmp)
    write_bytes_atomic(path, data)
    return path


def _payload(path: Path) -> bytes:
    """The verified ``torch.save`` bytes of ``path``; DamagedCheckpoint when the digest is wrong."""
    data = path.read_bytes()
    header, newline, payload = data[:_HEADER_LIMIT].partition(b"\n")
    parts = header.split(b" ")
    if not newline or len(parts) != 4 or parts[0] != _MAGIC or parts[2] != b"blake2b":
        raise DamagedCheckpoint(f"{path} is not a fastcifar checkpoint (no checkpoint header)")
    if parts[1] != str(FORMAT_VERSION).encode():
        raise DamagedCheckpoint(
            f"{path} has checkpoint format {parts[1].decode(errors='replace')}, "
            f"this version reads format {FORMAT_VERSION}"
        )
    payload = data[len(header) + 1 :]
    if hashlib.blake2b(payload, digest_size=32).hexdigest().encode() != parts[3]:
        raise DamagedCheckpoint(f"{path} is damaged: its content does not match the hash stored with it")
    return payload


def _unpickle(path: Path, payload: bytes) -> dict[str, Any]:
    try:
        # weights_only: tensors and plain Python values only; any other object (and any code a
        # crafted pickle names) is refused instead of being run.
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DamagedCheckpoint(
            f"refusing to load {path}: it holds more than tensors and plain values ({reason[:120]}); "
            "only load checkpoints written by fastcifar.train"
        ) from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise DamagedCheckpoint(f"{path} is not a fastcifar checkpoint of format {FORMAT_VERSION}")
    return state


def verify(path: str | os.PathLike) -> bool:
    """True when ``path`` exists and its content matches its stored hash."""
    try:
        _payload(Path(path))
    except (OSError, DamagedCheckpoint):
        return False
    return True


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and verify a checkpoint written by :func:`save_checkpoint` onto the CPU.

    Raises UserError (one line) when the file is missing, unreadable, damaged or not plain data;
    for a damaged file the message names the previous checkpoint when that one is intact.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}: pass the folder of a run started by fastcifar.train")
    try:
        return _unpickle(path, _payload(path))
    except OSError as err:
        raise UserError(f"cannot read checkpoint {path}: {err.strerror or err}") from None
    except DamagedCheckpoint as err:
        previous = previous_path(path)
        if previous != path and verify(previous):
            raise DamagedCheckpoint(
                f"{err}; the previous checkpoint {previous} is intact: copy it over {path.name} to resume from there"
            ) from None
        raise DamagedCheckpoint(f"{err}; start a new run") from None
