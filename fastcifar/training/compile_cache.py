"""The torch.compile cache: where a run keeps what Inductor compiled, and what it found there.

Inductor caches compiled graphs (FX graph cache, AOTAutograd cache, autotuning results) under
``TORCHINDUCTOR_CACHE_DIR``, by default a per-user folder in the temporary directory
(``/tmp/torchinductor_<user>``), and the Triton kernels it builds under ``<that>/triton`` unless
``TRITON_CACHE_DIR`` says otherwise. A second process compiling the same model and variant finds
its graphs there and skips code generation. ``--compile_cache DIR`` points both at ``DIR``
(Triton's at ``DIR/triton``); without it the environment is left alone.

:func:`compile_cache` applies and checks the folder for the length of a run;
:func:`check_compile_cache` is the one writability check before compiling (a UserError naming the
folder and where it came from; :meth:`fastcifar.training.variant.Variant.wrap` calls it too);
:func:`cache_counts` reads Inductor's own hit / miss counters.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

from fastcifar.errors import UserError

INDUCTOR_ENV = "TORCHINDUCTOR_CACHE_DIR"
TRITON_ENV = "TRITON_CACHE_DIR"
# Inductor's counters (torch._dynamo.utils.counters["inductor"]) for its FX graph cache: one
# lookup per compiled graph (forward, backward, evaluation), in torch 2.11 as in 2.14.
COUNTERS = {"hits": "fxgraph_cache_hit", "misses": "fxgraph_cache_miss", "bypasses": "fxgraph_cache_bypass"}


def default_cache_dir() -> str:
    """Inductor's own default folder, ``<tmp>/torchinductor_<user>``.

    Restated from torch's ``cache_dir_utils.default_cache_dir``: importing that imports
    torch._dynamo, which fails with a traceback when this very folder cannot be written.
    """
    import getpass
    import re

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid_{os.getuid()}"
    return os.path.join(tempfile.gettempdir(), "torchinductor_" + re.sub(r'[\\/:*?"<>|]', "_", user))


def resolve_cache_dir(directory: str | None = None) -> tuple[str, str]:
    """The folder a compile will use and where that choice came from.

    ``directory`` (the flag) wins, then ``TORCHINDUCTOR_CACHE_DIR``, then Inductor's default.
    Returns ``(absolute path, source)`` with source ``--compile_cache``, ``TORCHINDUCTOR_CACHE_DIR``
    or ``default``.
    """
    if directory:
        return os.path.abspath(os.path.expanduser(directory)), "--compile_cache"
    if os.environ.get(INDUCTOR_ENV):
        return os.path.abspath(os.environ[INDUCTOR_ENV]), INDUCTOR_ENV
    return default_cache_dir(), "default"


def check_cache_dir(path: str | os.PathLike, source: str = "--compile_cache") -> None:
    """UserError (one line) unless ``path`` can be created and written.

    ``source`` says where the folder came from (``--compile_cache``, ``TORCHINDUCTOR_CACHE_DIR`` or
    ``default``), so the message tells what to change.
    """
    from fastcifar.atomic import folder_write_problem

    problem = folder_write_problem(path)
    if problem is None:
        return
    if source == "--compile_cache":
        what, remedy = "--compile_cache", "pass a writable --compile_cache DIR"
    else:
        what = INDUCTOR_ENV if source == INDUCTOR_ENV else "Inductor's default compile cache"
        remedy = f"set {INDUCTOR_ENV} to a writable folder (fastcifar.train: or pass --compile_cache DIR)"
    raise UserError(f"cannot write the compile cache {path} ({what}): {problem}; {remedy}")


def check_compile_cache(directory: str | None = None) -> str:
    """Check the folder compiles will use (:func:`resolve_cache_dir`) before any compiling; return it.

    torch.compile needs it with any backend (importing torch._dynamo creates it) and Inductor writes
    its generated code there.
    """
    path, source = resolve_cache_dir(directory)
    check_cache_dir(path, source)
    return path


def _clear_inductor_path_caches() -> None:
    """Forget cache paths Inductor memoised in this process (they follow the environment again)."""
    try:
        from torch._inductor.utils import clear_caches
    except ImportError:
        return
    clear_caches()


@contextlib.contextmanager
def compile_cache(directory: str | None, enabled: bool = True) -> Iterator[str | None]:
    """Use ``directory`` as the compile cache inside the block; yields the folder compiles use.

    With ``directory`` set, ``TORCHINDUCTOR_CACHE_DIR`` and ``TRITON_CACHE_DIR`` (``directory/triton``)
    point there, and both are restored on exit, so a later run in the same process is unaffected.
    Without it the environment is untouched. The folder is checked first (:func:`check_cache_dir`).
    ``enabled=False`` (an eager run) does nothing and yields None.
    """
    if not enabled:
        yield None
        return
    path = check_compile_cache(directory)
    if not directory:
        yield path
        return
    saved = {name: os.environ.get(name) for name in (INDUCTOR_ENV, TRITON_ENV)}
    os.environ[INDUCTOR_ENV] = path
    os.environ[TRITON_ENV] = os.path.join(path, "triton")
    _clear_inductor_path_caches()
    try:
        yield path
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _clear_inductor_path_caches()


def cache_counts() -> dict[str, int]:
    """Inductor's FX graph cache lookups so far in this process: ``hits``, ``misses``, ``bypasses``."""
    from torch._dynamo.utils import counters

    inductor = counters["inductor"]
    return {name: int(inductor.get(key, 0)) for name, key in COUNTERS.items()}


def counts_since(before: dict[str, int]) -> dict[str, int]:
    """The lookups since ``before`` (a :func:`cache_counts` snapshot)."""
    now = cache_counts()
    return {name: now[name] - before.get(name, 0) for name in now}
