"""Trace analysis behind ``python -m fastcifar.analyze``.

Modules, one purpose each:

- :mod:`.trace`: find the variants of a profile folder and load their PyTorch profiler traces
  into plain event lists (clear :class:`~fastcifar.errors.UserError` for bad input).
- :mod:`.categories`: kernel / operator name -> category (convolution/GEMM, normalisation, ...).
- :mod:`.metrics`: one variant's figures (step times, busy vs idle, categories, top kernels,
  launches, host overhead, data wait, memory, SK select / Z-pool time).
- :mod:`.hta_bridge`: the parts HolisticTraceAnalysis computes for GPU traces (optional extra).
- :mod:`.report`: ``report.md``, ``report.json`` and PNG charts.
- :mod:`.optrace`: every aten op of one training step traced on the meta device (FLOPs, bytes,
  eager launches; CUDA's bf16 autocast policy and the fused Adam step reproduced there).
- :mod:`.roofline`: the computed floor of a step from such a trace (compute, memory unfused and
  under ideal fusion, per-op, launches), behind ``python -m bench.roofline``.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # Lazy: importing a submodule (e.g. categories) should not pull in matplotlib or pandas.
    if name == "analyze":
        from fastcifar.profiling.comparison import analyze

        return analyze
    raise AttributeError(f"module 'fastcifar.profiling' has no attribute {name!r}")


__all__ = ["analyze"]
