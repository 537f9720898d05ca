"""Shared wrapper that turns a ``fire`` component into a command line with clean errors."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from fastcifar.errors import UserError


def _reports_errors() -> bool:
    """Under torchrun every rank checks the same flags: only rank 0 prints the one line."""
    return os.environ.get("RANK", "0") == "0"


def run_cli(component: Any, prog: str, check: Callable[[], None] | None = None) -> None:
    """Run ``component`` with :func:`fire.Fire`; a :class:`UserError` becomes one line on stderr.

    ``check`` runs first, inside the same error handling (e.g. rejecting unknown flags before fire
    parses anything). Exit codes: 0 success, 2 user error (3 for a NaN loss), 130 interrupted
    before any handler saved state.
    """
    import fire

    try:
        if check is not None:
            check()
        result = fire.Fire(component, name=prog)
    except UserError as err:
        if _reports_errors():
            print(f"{prog}: error: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    del result
