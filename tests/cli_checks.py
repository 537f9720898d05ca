"""The command-line promise, checked one way everywhere: a user mistake is exactly one stderr line
``<prog>: error: <what and what to do>``, exit status 2, no traceback (fastcifar.cli)."""

from __future__ import annotations

import contextlib
import runpy
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest


@dataclass(frozen=True)
class Exited:
    """How an in-process command ended: what a subprocess.CompletedProcess would say."""

    returncode: int
    stdout: str
    stderr: str


def call_main(main: Callable[..., Any], argv: Sequence[str], capsys: pytest.CaptureFixture) -> Exited:
    """``main(argv)`` in this process, its exit status (0 when it returns) and its output."""
    capsys.readouterr()
    code: Any = 0
    try:
        main(list(argv))
    except SystemExit as exited:
        code = exited.code
    out = capsys.readouterr()
    return Exited(0 if code is None else code, out.out, out.err)


def run_module(
    module: str, argv: Sequence[str], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> Exited:
    """``python -m module *argv`` in this process: the module's own ``__main__`` block, as a user runs it."""
    monkeypatch.setattr(sys, "argv", [module, *argv])

    def main(_argv: list[str]) -> None:
        with warnings.catch_warnings():  # runpy warns that an imported module runs again as __main__
            warnings.simplefilter("ignore", RuntimeWarning)
            runpy.run_module(module, run_name="__main__", alter_sys=False)

    return call_main(main, argv, capsys)


def assert_user_error(result: Any, prog: str, *fragments: str, progress_ok: bool = False, code: int = 2) -> str:
    """``result`` (a CompletedProcess or :class:`Exited`) ended with one error line naming every fragment.

    With ``progress_ok`` other stderr lines may precede it (a library's progress bar), none of them
    an error. Returns the line.
    """
    stderr = result.stderr
    assert result.returncode == code, f"exit {result.returncode}, not {code}\n{stderr[-3000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    if progress_ok:
        assert not [line for line in lines[:-1] if "error" in line.lower() or "Errno" in line], stderr[-3000:]
    else:
        assert len(lines) == 1, f"{len(lines)} lines on stderr:\n{stderr[-3000:]}"
    line = lines[-1]
    assert line.startswith(f"{prog}: error: "), line
    for fragment in fragments:
        assert fragment in line, f"{line!r} lacks {fragment!r}"
    return line


@contextlib.contextmanager
def no_fire() -> Any:
    """fire unimportable in this process, as on the GPU machine that lacks it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "fire", None)  # import fire -> ImportError
        yield
