"""One writer per folder (fastcifar.locks): real processes hold and contend for a folder's lock."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_runs import start_holder

from fastcifar.errors import UserError
from fastcifar.locks import LOCK_NAME, FolderInUse, hold_folder, holder, is_held


def test_a_second_process_is_refused_with_the_holders_pid_host_and_command(tmp_path):
    child = start_holder(tmp_path / "run")
    try:
        assert is_held(tmp_path / "run")
        with pytest.raises(FolderInUse) as refused:
            with hold_folder(tmp_path / "run", "second"):
                pytest.fail("the second writer got the lock")
        message = str(refused.value)
        assert isinstance(refused.value, UserError) and "\n" not in message
        assert f"pid {child.pid} on host {socket.gethostname()}" in message
        assert "-c" in message  # the holder's command line
        assert holder(tmp_path / "run")["command"] == "test-holder"
    finally:
        child.stdin.close()
        child.wait()
    with hold_folder(tmp_path / "run", "second") as folder:  # free once the holder ended
        assert folder == tmp_path / "run"
        assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_the_kernel_releases_the_lock_of_a_killed_holder(tmp_path):
    child = start_holder(tmp_path / "run")
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not is_held(tmp_path / "run")
    with hold_folder(tmp_path / "run", "after-kill"):
        assert holder(tmp_path / "run")["command"] == "after-kill"


def test_a_nested_hold_in_the_same_process_keeps_the_lock(tmp_path):
    with hold_folder(tmp_path, "outer"):
        with hold_folder(tmp_path, "inner"):
            pass
        assert is_held(tmp_path)
        assert holder(tmp_path)["command"] == "outer"
    assert not is_held(tmp_path)


_FORKING_HOLDER = """
import os, sys, time
from fastcifar.locks import hold_folder
with hold_folder(sys.argv[1], "test-parent"):
    if os.fork() == 0:  # a worker sharing the open lock file outlives its parent by a moment
        time.sleep(2.0)
        os._exit(0)
    print("held", flush=True)
    os._exit(0)  # gone without releasing anything, as after kill -9
"""


def test_a_lock_left_to_an_exited_holders_workers_is_waited_for_not_refused(tmp_path):
    """After ``kill -9`` of a training its forked loader workers keep the lock until they exit."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    parent = subprocess.Popen(
        [sys.executable, "-c", _FORKING_HOLDER, str(tmp_path / "run")], stdout=subprocess.PIPE, env=env, text=True
    )
    assert parent.stdout.readline().strip() == "held"
    parent.wait()  # reaped: its pid is gone, its worker still holds the lock
    assert holder(tmp_path / "run")["pid"] == parent.pid
    with hold_folder(tmp_path / "run", "second") as folder:
        assert json.loads((folder / LOCK_NAME).read_text())["command"] == "second"


def test_a_live_holders_lock_is_refused_at_once_even_with_the_grace(tmp_path, monkeypatch):
    import fastcifar.locks as locks

    monkeypatch.setattr(locks, "EXIT_GRACE_S", 60.0)
    child = start_holder(tmp_path / "run")
    try:
        started = time.monotonic()
        with pytest.raises(FolderInUse):
            with hold_folder(tmp_path / "run", "second"):
                pytest.fail("the second writer got the lock")
        assert time.monotonic() - started < locks.EXIT_GRACE_S  # refused without waiting out the grace
    finally:
        child.stdin.close()
        child.wait()
