"""The signals a cluster sends before it kills a job, and the exit status of a command they stopped.

Schedulers (SLURM, Kubernetes, ...) send SIGTERM, some SIGUSR1 or SIGHUP, and kill the job after a
grace period. ``python -m fastcifar.train`` and ``python -m fastcifar.study run`` treat each of
:data:`PREEMPTION_SIGNALS` as Ctrl-C is treated (the current step finishes, a checkpoint is saved,
the command to continue is printed) and then exit with :data:`PREEMPTED_EXIT_CODE`; a repeated
preemption signal changes nothing (the scheduler's SIGKILL ends the grace period), while a second
Ctrl-C still aborts at once.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

PREEMPTION_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP)
# EX_TEMPFAIL of sysexits.h, "temporary failure; the user is invited to retry": the work is saved and
# the same command continues it. Distinct from 0 (done), 2 (user error), 3 (NaN loss), 130 (Ctrl-C
# abort) and from 128 + N, which a shell reports for a process that signal N killed without saving.
PREEMPTED_EXIT_CODE = 75


def signal_name(signum: int) -> str:
    """``"SIGTERM"`` for ``signal.SIGTERM`` (what messages and records show)."""
    return signal.Signals(signum).name


class StopSignal(KeyboardInterrupt):
    """A preemption signal raised as an exception (see :func:`raising_on_preemption`).

    A KeyboardInterrupt, so code that stops cleanly on Ctrl-C does the same for it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal_name(signum))
        self.signum = signum


@contextmanager
def raising_on_preemption() -> Iterator[None]:
    """Within the block, the first preemption signal raises :class:`StopSignal`; later ones are ignored.

    For a command that stops by unwinding (``study run``); the main thread only (elsewhere: no-op).
    """
    raised = False

    def handle(signum: int, frame: Any) -> None:
        nonlocal raised
        if not raised:
            raised = True
            raise StopSignal(signum)

    previous = {}
    try:
        for signum in PREEMPTION_SIGNALS:
            previous[signum] = signal.signal(signum, handle)
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
