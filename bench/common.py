"""What every benchmark shares: device sync, atomic result files, the machine and package record, deadlines."""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from fastcifar.atomic import write_text_atomic
from fastcifar.environment import package_version, package_versions
from fastcifar.training.engine import synchronize as sync  # the one "wait for queued device work" helper

RESULTS_DIR = Path(__file__).resolve().parent / "results"

__all__ = [
    "RESULTS_DIR",
    "Deadline",
    "cpu_name",
    "markdown_table",
    "package_version",
    "package_versions",
    "sync",
    "write_text_atomic",
]


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (falls back to platform's guess)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def markdown_table(header: Sequence[str], align: str, rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table; ``align`` has one ``l`` or ``r`` per column (numbers read best right-aligned)."""
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    lines = ["| " + " | ".join(header) + " |", rule]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


class Deadline:
    """A point in ``time.monotonic()`` time that long work checks between its parts.

    ``Deadline(None)`` never expires. Benchmarks take ``time_left`` (this object's bound method or
    any zero-argument callable returning seconds) and stop starting new parts when it runs low.
    """

    def __init__(self, seconds: float | None, start: float | None = None) -> None:
        self.start = time.monotonic() if start is None else start
        self.at = math.inf if seconds is None else self.start + seconds

    def time_left(self) -> float:
        """Seconds until the deadline (negative once passed; ``inf`` without one)."""
        return self.at - time.monotonic()

    def elapsed(self) -> float:
        """Seconds since the deadline was set."""
        return time.monotonic() - self.start
