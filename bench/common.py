"""What every benchmark shares: device sync, the result record and its files, deadlines."""

from __future__ import annotations

import datetime
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from fastcifar.atomic import folder_write_problem, write_json_atomic, write_text_atomic
from fastcifar.environment import machine_record
from fastcifar.markdown import markdown_table
from fastcifar.training.engine import synchronize as sync  # the one "wait for queued device work" helper

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def check_out_dir(folder: str | Path, flag: str) -> None:
    """UserError (one line) before any measuring when the results folder cannot be written."""
    from fastcifar.errors import UserError

    problem = folder_write_problem(folder)
    if problem is not None:
        raise UserError(f"cannot write results into {folder} ({problem}); pass a writable {flag}.")


__all__ = [
    "RESULTS_DIR",
    "Deadline",
    "check_out_dir",
    "command_line",
    "environment_line",
    "markdown_table",
    "new_record",
    "save_record",
    "sync",
    "write_record",
]


def command_line() -> str:
    """The command that started this process, as a shell would take it (``python -m bench.train --steps 5``).

    A benchmark called from another (the suite runs several) records the command that ran, the
    caller's; the benchmark's own parameters are in the record's ``config``.
    """
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    head = ["python", "-m", spec.name] if spec is not None and spec.name else ["python", *sys.argv[:1]]
    return " ".join([*head, *(shlex.quote(a) for a in sys.argv[1:])])


def new_record(benchmark: str, device: Any = None, packages: tuple[str, ...] = ()) -> dict[str, Any]:
    """The header every result file starts with: ``benchmark``, ``command``, ``date``, ``environment``.

    ``date`` is UTC, ISO 8601 to the second; ``environment`` is
    :func:`fastcifar.environment.machine_record` of ``device`` (None: nothing ran on a device) with
    ``packages``' versions added. Made after the measurement, so its load average is the one the
    measurement left.
    """
    return {
        "benchmark": benchmark,
        "command": command_line(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": machine_record(device, packages),
    }


# machine_record's keys that describe the machine; the others are package versions.
MACHINE_KEYS = frozenset(
    ("platform", "device_type", "cpu", "cpu_count", "torch_threads", "load_average", "triton_interpret")
    + ("gpu", "sm_count", "memory_gib", "driver")
)


def environment_line(env: dict[str, Any]) -> str:
    """A record's ``environment`` in two sentences for its Markdown: versions, then the machine."""
    found = ", ".join(f"{k} {v}" for k, v in env.items() if k not in MACHINE_KEYS and v is not None)
    gpu = f"{env['gpu']} (driver {env.get('driver')}); " if env.get("gpu") else ""
    return (
        f"Versions: {found}. Machine: {gpu}{env['cpu']}, {env['cpu_count']} CPU cores, "
        f"{env['torch_threads']} torch threads, load average {env['load_average']} when recorded."
    )


def write_record(stem: Path, record: dict[str, Any], markdown: str) -> None:
    """``stem.json`` (the record) and ``stem.md`` (its summary), each written atomically."""
    write_json_atomic(stem.with_suffix(".json"), record)
    write_text_atomic(stem.with_suffix(".md"), markdown)


def save_record(out_dir: str | Path, record: dict[str, Any], markdown: str) -> Path:
    """Write ``record`` (a :func:`new_record` header and results) under its name in ``out_dir``.

    The name is ``<benchmark>-<device type>-<date>`` (``<benchmark>-<date>`` without a device): one
    file per benchmark, device and day, so a rerun the same day replaces its result. Returns the stem.
    """
    device = record["environment"]["device_type"]
    parts = [record["benchmark"], *([device] if device else []), record["date"][:10]]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / "-".join(parts)
    write_record(stem, record, markdown)
    print(f"wrote {stem}.json and {stem}.md")
    return stem


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
