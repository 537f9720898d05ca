"""Helpers for the small training runs the tests start: their flags, the run itself, its command line, a Ctrl-C hook."""

from __future__ import annotations

import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def one_epoch_flags(data_root: str | Path) -> dict[str, Any]:
    """One epoch on CPU over a prepared synthetic data root: batches of 16, one loader worker."""
    return dict(
        epochs=1,
        batch_size=16,
        eval_batch_size=16,
        dataset="synthetic",
        data_root=str(data_root),
        device="cpu",
        workers=1,
    )


def train_tiny(tiny_flags: Mapping[str, Any], out: str | Path, **flags: Any) -> dict[str, Any]:
    """``fastcifar.train.train`` with conftest's ``tiny_flags``, ``out`` and ``flags`` over them; its summary."""
    from fastcifar.train import train

    return train(**{**tiny_flags, "out": str(out), **flags})


def command_line(flags: Mapping[str, Any]) -> list[str]:
    """``flags`` as ``python -m fastcifar.train`` arguments: ``--name value``, containers as Python literals."""
    argv = []
    for name, value in flags.items():
        argv += [f"--{name}", repr(value) if isinstance(value, (dict, list, tuple)) else str(value)]
    return argv


class InterruptAtStep:
    """Batch hook: Ctrl-C (SIGINT to this process) during train step ``at`` (counted over the run)."""

    def __init__(self, at: int) -> None:
        self.at, self.train_steps = at, 0

    def __call__(self, split: str, images: Any, labels: Any) -> None:
        if split == "train":
            self.train_steps += 1
            if self.train_steps == self.at:
                signal.raise_signal(signal.SIGINT)
