"""The torch.compile cache: where a run keeps what Inductor compiled, and what it found there.

Inductor caches compiled graphs (FX graph cache, AOTAutograd cache, autotuning results) under
``TORCHINDUCTOR_CACHE_DIR``, by default a per-user folder in the temporary directory
(``/tmp/torchinductor_<user>``), and the Triton kernels it builds under ``<that>/triton`` unless
``TRITON_CACHE_DIR`` says otherwise. A second process compiling the same model and variant finds
its graphs there and skips code generation. ``--compile_cache DIR`` points both at ``DIR``
(Triton's at ``DIR/triton``); without it the environment is left alone.

:func:`compile_cache` applies and checks the folder for the length of a run; :func:`check_cache_dir`
is the one writability check (a UserError naming the folder and where it came from);
:func:`cache_counts` reads Inductor's own hit / miss counters.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from fastcifar.errors import UserError

INDUCTOR_ENV = "TORCHINDUCTOR_CACHE_DIR"
TRITON_ENV = "TRITON_CACHE_DIR"
# Inductor's counters (torch._dynamo.utils.counters["inductor"]) for its FX graph cache: one
# lookup per compiled graph (forward, backward, evaluation), in torch 2.11 as in 2.14.
COUNTERS = {"hits": "fxgraph_cache_hit", "misses": "fxgraph_cache_miss", "bypasses": "fxgraph_cache_bypass"}


def default_cache_dir() -> str:
    """Inductor's own default folder (``<tmp>/torchinductor_<user>``)."""
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir as inductor_default

        return inductor_default()
    except ImportError:  # older layouts: the same rule
        import getpass

        return os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}")


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
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        what = {"default": "Inductor's default compile cache", INDUCTOR_ENV: f"{INDUCTOR_ENV}"}.get(
            source, "--compile_cache"
        )
        raise UserError(
            f"cannot write the compile cache {folder} ({what}): {err.strerror or err}; "
            "pass a writable --compile_cache DIR"
        ) from None


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
    path, source = resolve_cache_dir(directory)
    check_cache_dir(path, source)
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
