"""What the GPU suite checks before it spends time: optional packages and whether Triton can build.

Triton compiles a small C launcher for every kernel signature with the host C compiler (``$CC``,
else ``gcc``, else ``clang``) against the Python headers. Without them every Triton kernel fails at
its first call: ours, and every kernel Inductor generates for ``torch.compile`` on a GPU. The suite
asks here once and skips those sections with the reason instead of failing each of them.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sysconfig
from pathlib import Path

import torch

from bench.common import sync

# Import name -> what it adds; absent ones are recorded, never needed by the suite.
OPTIONAL_MODULES = {
    "ffcv": "FFCV loaders (the suite uses in-memory data instead)",
    "fire": "fire dispatches the command lines (without it fastcifar.cli calls the command itself)",
    "hta": "HolisticTraceAnalysis breakdowns in the profile report",
    "torch_tb_profiler": "TensorBoard's profiler plugin (traces also open in Perfetto)",
}


def optional_modules() -> dict[str, str]:
    """``{module: "present" | "absent (<why>)"}`` without importing the modules themselves."""
    found = {}
    for name in OPTIONAL_MODULES:
        try:
            present = importlib.util.find_spec(name) is not None
            found[name] = "present" if present else "absent"
        except (ImportError, ValueError) as err:  # a blocked or broken package reads as absent
            found[name] = f"absent ({type(err).__name__}: {err})"
    return found


def c_compiler() -> str | None:
    """The C compiler Triton would use (same order as triton.runtime.build), or None."""
    return os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang")


def python_headers() -> Path | None:
    """``Python.h`` where Triton looks for it, or None when the headers are not installed."""
    scheme = sysconfig.get_default_scheme()
    scheme = "posix_prefix" if scheme == "posix_local" else scheme  # Debian's scheme, as Triton does
    header = Path(sysconfig.get_paths(scheme=scheme)["include"]) / "Python.h"
    return header if header.is_file() else None


def triton_build_problem(device: torch.device) -> str | None:
    """Why Triton kernels cannot run on ``device`` (None when they can), checked by running one.

    On CUDA a one-block copy kernel is compiled and launched (this is where a missing compiler or
    header shows); elsewhere kernels run through ``TRITON_INTERPRET=1``, which builds nothing.
    """
    try:
        import triton  # noqa: F401
    except ImportError as err:
        return f"triton is not importable ({err})"
    if device.type != "cuda":
        if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
            return None
        return "no CUDA device and TRITON_INTERPRET is not set"
    if c_compiler() is None:
        return "no C compiler (set $CC or install gcc/clang): Triton cannot build its kernel launcher"
    if python_headers() is None:
        return "no Python.h (install the python3-dev headers): Triton cannot build its kernel launcher"
    try:
        x = torch.arange(64, device=device, dtype=torch.float32)
        y = torch.empty_like(x)
        _copy_kernel[(1,)](x, y, x.numel(), BLOCK=64)
        sync(device)
        if not torch.equal(x, y):
            return "a Triton test kernel ran but copied wrong values"
    except Exception as err:  # any build or launch failure is the reason to skip Triton sections
        return (
            f"a Triton test kernel failed: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
        )
    return None


try:
    import triton
    import triton.language as tl

    @triton.jit
    def _copy_kernel(src, dst, n, BLOCK: tl.constexpr):
        offsets = tl.arange(0, BLOCK)
        mask = offsets < n
        tl.store(dst + offsets, tl.load(src + offsets, mask=mask), mask=mask)

except ImportError:  # reported by triton_build_problem
    _copy_kernel = None
