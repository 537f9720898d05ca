"""Helpers for the small training runs the tests start: their flags, the run itself, its command line, a Ctrl-C hook."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
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


class PauseAtSteps:
    """Batch hook: at each train step in ``steps`` (counted over the run), create ``<cues>/at-<step>``
    and wait until ``<cues>/go-<step>`` exists: another process's cue, so a test acts while this run lives."""

    def __init__(self, steps: tuple[int, ...], cues: str | Path, limit_s: float = 600.0) -> None:
        self.steps, self.cues, self.limit_s, self.train_steps = set(steps), Path(cues), limit_s, 0

    def __call__(self, split: str, images: Any, labels: Any) -> None:
        import time

        if split != "train":
            return
        self.train_steps += 1
        if self.train_steps in self.steps:
            (self.cues / f"at-{self.train_steps}").touch()
            deadline = time.monotonic() + self.limit_s  # never hang a test run for good
            while not (self.cues / f"go-{self.train_steps}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)


# A process that holds a folder (fastcifar.locks), says so on stdout, and waits until its stdin closes.
_HOLDER = """
import sys
from fastcifar.locks import hold_folder
with hold_folder(sys.argv[1], sys.argv[2]):
    print("held", flush=True)
    sys.stdin.read()
"""


def start_holder(folder: str | Path, command: str = "test-holder") -> subprocess.Popen:
    """A live process holding ``folder`` as ``command`` (returns once the lock is taken); close its
    stdin to end it."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(folder), command],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert child.stdout.readline().strip() == "held"
    return child
