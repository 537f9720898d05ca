"""Shared wrapper that turns a ``fire`` component into a command line with clean errors."""

from __future__ import annotations

import sys
from typing import Any

from fastcifar.errors import UserError


def run_cli(component: Any, prog: str) -> None:
    """Run ``component`` with :func:`fire.Fire`; a :class:`UserError` becomes one line on stderr.

    Exit codes: 0 success, 2 user error, 130 interrupted before any handler saved state.
    """
    import fire

    try:
        result = fire.Fire(component, name=prog)
    except UserError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    del result
