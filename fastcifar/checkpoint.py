"""Training checkpoints: written atomically, complete enough to resume bit-for-bit.

A checkpoint holds the model, optimizer, scheduler and grad-scaler states, the random-number
generator states (Python, NumPy, torch CPU, every CUDA device), the position in the run
(``epoch`` = epochs completed, ``step`` = batches already done in the next epoch, non-zero only
after Ctrl-C), the per-epoch history and the run's config.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastcifar.errors import UserError

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1


def checkpoint_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINT_NAME


def capture_rng_state() -> dict[str, Any]:
    """Every generator a training step may draw from."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`; CUDA states are restored only where CUDA is in use."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda")
    if cuda_states is not None and torch.cuda.is_available():
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, then rename.

    A crash mid-write leaves the previous checkpoint untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format_version": FORMAT_VERSION, **state}
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` onto the CPU.

    Raises UserError when the file is missing or unreadable (both fixable by pointing elsewhere).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}: pass the folder of a run started by fastcifar.train")
    try:
        # weights_only=False: the file also holds RNG states and the config (plain Python objects),
        # and it is one this program wrote itself.
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # corrupt or truncated file
        raise UserError(f"cannot read checkpoint {path} ({type(err).__name__}); start a new run") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path} is not a fastcifar checkpoint of format {FORMAT_VERSION}; start a new run")
    return state
