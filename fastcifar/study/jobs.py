"""One training run of the study: its folder, its state, and one attempt at it as a subprocess.

A run lives in ``<out>/<row>/seed<k>/``, an ordinary ``fastcifar.train`` run folder, plus
``train.log`` (the subprocess's output) and ``study-run.json`` (the arguments and every attempt).
Its state is read from the folder alone, so re-running a study continues where it stopped:

- ``finished``: ``summary.json`` exists (the training's own end marker);
- ``interrupted``: a ``checkpoint.pt`` without a summary (resumed with ``--resume``), after Ctrl-C
  or a preemption signal (SIGTERM, SIGUSR1, SIGHUP: the training saves and exits 75);
- ``failed``: the last recorded attempt failed;
- ``pending``: nothing yet (or killed before its first checkpoint: started afresh).

:func:`attempt` is what an executor runs on the machine that owns the device; it returns a plain
dict so that Ray can ship it back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastcifar.atomic import read_json, write_json_atomic
from fastcifar.errors import UserError
from fastcifar.preemption import PREEMPTED_EXIT_CODE, PREEMPTION_SIGNALS

RECORD_NAME = "study-run.json"
LOG_NAME = "train.log"
SUMMARY_NAME = "summary.json"
CHECKPOINT_NAME = "checkpoint.pt"
# fastcifar.train's exit codes that no retry can change: a user error (2).
NOT_RETRIABLE = {2}


@dataclass(frozen=True)
class RunSpec:
    """One (row, seed) run: where it lives and the ``fastcifar.train`` arguments of a fresh start.

    ``runtime`` holds flags that every attempt passes, fresh or resumed, and that do not change
    the result (``--workers``, ``--log_every``); they are not compared between calls.
    """

    row: str
    seed: int
    folder: str  # absolute path of the run folder
    args: tuple[str, ...]
    runtime: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.row} seed{self.seed}"


def run_folder(out: str | os.PathLike, row: str, seed: int) -> Path:
    """``<out>/<row>/seed<k>``."""
    return Path(out) / row / f"seed{seed}"


def read_record(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The run's ``study-run.json`` (None when the run never started); UserError when it is damaged."""
    path = Path(folder) / RECORD_NAME
    if not path.is_file():
        return None
    return read_json(path, "delete it and re-run the study: the record is made again (its attempts are lost).")


def read_summary(folder: str | os.PathLike) -> dict[str, Any]:
    """The finished run's ``summary.json``; UserError when it is damaged."""
    return read_json(
        Path(folder) / SUMMARY_NAME, "delete it and re-run the study: that run resumes from its checkpoint."
    )


def state(folder: str | os.PathLike) -> str:
    """``finished``, ``interrupted``, ``failed`` or ``pending`` (see the module docstring)."""
    folder = Path(folder)
    if (folder / SUMMARY_NAME).is_file():
        return "finished"
    if (folder / CHECKPOINT_NAME).is_file():
        record = read_record(folder)
        last = (record or {}).get("attempts", [{}])[-1:] or [{}]
        return "failed" if last[0].get("status") == "failed" else "interrupted"
    record = read_record(folder)
    if record and record.get("attempts") and record["attempts"][-1].get("status") == "failed":
        return "failed"
    return "pending"


def has_started(folder: str | os.PathLike) -> bool:
    """Whether a run of the folder ever started (an attempt recorded, a checkpoint or a summary)."""
    folder = Path(folder)
    if (folder / SUMMARY_NAME).is_file() or (folder / CHECKPOINT_NAME).is_file():
        return True
    record = read_record(folder)
    return bool(record and record.get("attempts"))


def identity_args(args: Any) -> list[str]:
    """A run's training arguments without ``--out``: a study folder copied or moved elsewhere is the same study."""
    return [token for token in (args or []) if not str(token).startswith("--out=")]


def claim(spec: RunSpec) -> None:
    """Create the run's record, or check that an existing one was made with the same arguments.

    Two different configurations must never share a folder: a finished run would be reported
    under flags it was not trained with. The folder's own place (``--out``) is not compared.
    """
    record = read_record(spec.folder)
    if record is None:
        write_json_atomic(
            Path(spec.folder) / RECORD_NAME,
            {"row": spec.row, "seed": spec.seed, "args": list(spec.args), "attempts": []},
        )
        return
    if identity_args(record.get("args")) != identity_args(spec.args):
        raise UserError(
            f"{spec.folder} was run with other training flags ({' '.join(record.get('args', []))}); "
            "use another --out for a different configuration."
        )


def add_attempt(spec: RunSpec, result: dict[str, Any]) -> None:
    """Append one attempt's result to the run's record (atomically)."""
    record = read_record(spec.folder) or {"row": spec.row, "seed": spec.seed, "args": list(spec.args)}
    record.setdefault("attempts", []).append(result)
    write_json_atomic(Path(spec.folder) / RECORD_NAME, record)


def command(spec: RunSpec, device_flag: str | None) -> list[str]:
    """The subprocess command: a fresh start, or ``--resume`` when a checkpoint exists."""
    base = [sys.executable, "-m", "fastcifar.train"]
    device = [f"--device={device_flag!r}"] if device_flag else []
    if (Path(spec.folder) / CHECKPOINT_NAME).is_file():
        return [*base, f"--resume={spec.folder!r}", *spec.runtime, *device]
    return [*base, *spec.args, *spec.runtime, *device]


# Children of this process, so an interrupted runner can stop them cleanly (see interrupt_children).
_CHILDREN: set[subprocess.Popen] = set()
_CHILDREN_LOCK = threading.Lock()


def _die_with_parent() -> None:
    """In the child: receive SIGTERM when the runner dies (Linux), so no training is orphaned."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def attempt(spec: RunSpec, device_label: str, device_flag: str | None, env: dict[str, str] | None = None) -> dict:
    """Run (or resume) ``spec`` once as ``python -m fastcifar.train``; return what happened.

    The result: ``status`` (finished / interrupted / failed), ``returncode``, ``seconds``,
    ``device``, ``resumed``; for a finished run ``top1``; for an interrupted one ``preempted`` (a
    preemption signal stopped it, not Ctrl-C) and ``checkpoint`` (whether one exists to resume);
    for a failed one ``error`` (the last line the training printed) and ``retriable``.
    """
    folder = Path(spec.folder)
    folder.mkdir(parents=True, exist_ok=True)
    cmd = command(spec, device_flag)
    if not (folder / CHECKPOINT_NAME).is_file():
        clear_partial_run(folder)
    resumed = any(token.startswith("--resume") for token in cmd)
    start = time.monotonic()
    with open(folder / LOG_NAME, "ab") as log:
        log.write(f"$ {' '.join(cmd[1:])}\n".encode())
        log.flush()
        # Its own session: a Ctrl-C in the terminal reaches the runner only, which then asks each
        # training once to save and stop (a second SIGINT would make it abort without saving).
        child = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        with _CHILDREN_LOCK:
            _CHILDREN.add(child)
        try:
            returncode = child.wait()
        finally:
            with _CHILDREN_LOCK:
                _CHILDREN.discard(child)
    result: dict[str, Any] = {
        "device": device_label,
        "returncode": returncode,
        "resumed": resumed,
        "seconds": round(time.monotonic() - start, 3),
    }
    if (folder / SUMMARY_NAME).is_file():
        summary = read_summary(folder)
        return {**result, "status": "finished", "top1": summary.get("final_top1")}
    # fastcifar.train saved and stopped (Ctrl-C: 0, a preemption signal: 75), or a signal ended it
    # before training began (nothing to save: "checkpoint" tells which).
    if returncode in (0, 130, PREEMPTED_EXIT_CODE, -signal.SIGINT, *(-s for s in PREEMPTION_SIGNALS)):
        preempted = returncode == PREEMPTED_EXIT_CODE or -returncode in PREEMPTION_SIGNALS
        checkpoint = (folder / CHECKPOINT_NAME).is_file()
        return {**result, "status": "interrupted", "preempted": preempted, "checkpoint": checkpoint}
    return {
        **result,
        "status": "failed",
        "error": last_line(folder / LOG_NAME),
        "retriable": returncode not in NOT_RETRIABLE,
    }


def clear_partial_run(folder: Path) -> None:
    """Remove what a training killed before its first checkpoint left, so a fresh start may begin.

    ``fastcifar.train`` refuses to start a new run in a folder holding another run's files; these
    are this run's own, from an attempt that cannot be resumed.
    """
    import shutil

    from fastcifar.training.metrics import RUN_FILES

    for name in RUN_FILES:
        (folder / name).unlink(missing_ok=True)
    shutil.rmtree(folder / "tb", ignore_errors=True)


def last_line(path: Path, limit: int = 300) -> str:
    """The last non-empty line of a log (after the last carriage return: progress bars redraw)."""
    try:
        text = path.read_bytes()[-16384:].decode(errors="replace")
    except OSError:
        return ""
    lines = [line.rsplit("\r", 1)[-1].strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    return lines[-1][:limit] if lines else ""


def interrupt_children(timeout: float = 120.0, signum: int = signal.SIGINT) -> None:
    """Ask every running training to save and stop (``signum``: SIGINT, or the preemption signal the
    runner got, so that the training records it), then wait; kill what does not stop."""
    with _CHILDREN_LOCK:
        children = list(_CHILDREN)
    for child in children:
        if child.poll() is None:
            child.send_signal(signum)
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
