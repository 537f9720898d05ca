"""Shared wrapper that turns a ``fire`` component into a command line with clean errors.

Every command line of the project goes through :func:`run_cli`, which checks the arguments
against the component's signature *before* fire runs anything. Why not leave that to fire: it
calls the function with the flags it recognises and reports the rest only after the function
returns, i.e. after a whole training or prepare run; and it quietly binds a stray word to the
next positional parameter (``--out x 3`` once set the learning rate to 3.0).
"""

from __future__ import annotations

import inspect
import os
import re
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from fastcifar.errors import UserError

__all__ = ["check_arguments", "run_cli"]


def _reports_errors() -> bool:
    """Under torchrun every rank checks the same flags: only rank 0 prints the one line."""
    return os.environ.get("RANK", "0") == "0"


def _is_flag(token: str) -> bool:
    """fire's notion of a flag: a leading hyphen, unless the token is a negative number."""
    return token.startswith("-") and re.fullmatch(r"-\d+(\.\d*)?([eE][-+]?\d+)?", token) is None


def check_arguments(argv: Sequence[str], known: Collection[str], *, command: str = "") -> list[str]:
    """The flag names on a command line; UserError for anything fire would misread.

    Rejects unknown flags, stray positional words and anything after ``--`` (fire's own options).
    ``--name value`` and ``--name=value`` give a value; ``--name`` alone (last, or followed by a
    flag) means true and ``--noname`` false, as in fire. A one-letter ``-x`` is fire's short form
    of the one flag starting with ``x``.
    """
    where = f" for {command}" if command else ""
    valid = ", ".join(f"--{n}" for n in known) or "(none)"
    names: list[str] = []
    index = 0
    while index < len(argv):
        token = argv[index]
        if token == "--":
            raise UserError("nothing may follow --; pass every value as --flag value.")
        if token in ("--help", "-h"):
            index += 1
            continue
        if not _is_flag(token):
            raise UserError(f"unexpected argument {token!r}{where}: every value needs its flag, e.g. --name value.")
        name, has_value = token.lstrip("-").split("=", 1)[0].replace("-", "_"), "=" in token
        short = len(name) == 1 and not token.startswith("--")
        matches = [flag for flag in known if flag[0] == name] if short else []
        if len(matches) == 1:
            name = matches[0]
        elif name not in known and name.startswith("no") and name[2:] in known and not has_value:
            name, has_value = name[2:], True  # --noflag: a boolean, takes no value
        if name not in known or (short and len(matches) != 1):
            raise UserError(f"unknown flag {token.split('=', 1)[0]}{where}; valid flags: {valid}.")
        takes_no_value = has_value or index + 1 == len(argv) or _is_flag(argv[index + 1])
        names.append(name)
        index += 1 if takes_no_value else 2
    return names


def _flag_names(function: Callable[..., Any]) -> list[str] | None:
    """The flags ``function`` takes; None when it takes ``**kwargs`` (such a command checks its own)."""
    parameters = inspect.signature(function).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return [p.name for p in parameters if p.kind is not inspect.Parameter.VAR_POSITIONAL]


def _check_component(component: Any, argv: Sequence[str]) -> None:
    """Check ``argv`` against a function's signature, or a subcommand's in a dict of commands."""
    command = ""
    if isinstance(component, Mapping):
        if not argv or argv[0] in ("-h", "--help"):
            return
        if argv[0] not in component:
            raise UserError(f"unknown command {argv[0]!r}; choose one of: {', '.join(component)}.")
        command, component, argv = argv[0], component[argv[0]], argv[1:]
    known = _flag_names(component) if callable(component) else None
    if known is not None:
        check_arguments(argv, known, command=command)


def run_cli(component: Any, prog: str, *, argv: Sequence[str] | None = None, check: bool = True) -> None:
    """Run ``component`` with :func:`fire.Fire`; a :class:`UserError` becomes one line on stderr.

    ``component`` is a function or a dict of subcommand functions. With ``check`` the arguments
    are first checked against its signature (see :func:`check_arguments`); functions taking
    ``**kwargs`` check their own. Exit codes: 0 success, 2 user error (3 for a NaN loss), 130
    interrupted before any handler saved state.
    """
    import fire

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if check:
            _check_component(component, args)
        # Every command prints its own output; what a function returns (a summary dict, a folder)
        # is for Python callers, so fire is told to print nothing of it.
        fire.Fire(component, command=args, name=prog, serialize=lambda _result: None)
    except UserError as err:
        if _reports_errors():
            print(f"{prog}: error: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
