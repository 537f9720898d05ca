"""The figures HolisticTraceAnalysis (PyPI ``HolisticTraceAnalysis``) computes for GPU traces.

HTA is an optional extra (it pulls in Jupyter), so it is imported lazily and every failure turns
into a reason in the report instead of an error. It reads one rank's trace; we pass the variant's
file explicitly, since a profile folder holds one trace per variant rather than one per rank.

Used from HTA: temporal breakdown (idle / compute / non-compute time), kernel-type breakdown
(computation / communication / memory), idle-time breakdown (host wait / kernel wait / other) and
CUDA launch statistics (launch delay, runtime call duration). CPU traces have no GPU kernels, so
HTA has nothing to say about them.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any


def _records(frame: Any) -> list[dict]:
    """A pandas DataFrame as JSON-friendly records (numpy scalars -> Python numbers)."""
    out = []
    for row in frame.reset_index(drop=True).to_dict(orient="records"):
        clean = {}
        for key, value in row.items():
            if hasattr(value, "item"):
                value = value.item()
            clean[str(key)] = value
        out.append(clean)
    return out


def hta_available() -> bool:
    try:
        import hta  # noqa: F401
    except ImportError:
        return False
    return True


def hta_figures(trace_path: Path, device_kind: str) -> dict:
    """HTA's analyses of one trace, as plain dicts, or ``{"used": False, "reason": ...}``."""
    if device_kind != "cuda":
        return {"used": False, "reason": "CPU trace: HolisticTraceAnalysis analyses GPU kernels only"}
    try:
        from hta.trace_analysis import TraceAnalysis
    except ImportError:
        return {"used": False, "reason": "HolisticTraceAnalysis is not installed (pip install HolisticTraceAnalysis)"}
    # HTA logs and prints freely; keep the command's output to the report's summary.
    quiet = io.StringIO()
    logging.getLogger("hta").setLevel(logging.ERROR)
    result: dict = {"used": True, "computed": []}
    try:
        with contextlib.redirect_stdout(quiet):
            analysis = TraceAnalysis(
                trace_files={0: str(trace_path)}, trace_dir=str(trace_path.parent), include_last_profiler_step=True
            )
    except Exception as err:  # noqa: BLE001 - HTA failing on a trace must not stop the report
        return {
            "used": False,
            "reason": f"HolisticTraceAnalysis could not load the trace: {err.__class__.__name__}: {err}",
        }

    def attempt(key: str, fn: Any) -> None:
        try:
            with contextlib.redirect_stdout(quiet):
                result[key] = fn()
            result["computed"].append(key)
        except Exception as err:  # noqa: BLE001 - one failing analysis leaves the others
            result.setdefault("errors", {})[key] = f"{err.__class__.__name__}: {err}"

    attempt("temporal_breakdown", lambda: _records(analysis.get_temporal_breakdown(visualize=False)))
    attempt(
        "kernel_type_breakdown",
        lambda: _records(analysis.get_gpu_kernel_breakdown(visualize=False, num_kernels=10)[0]),
    )
    attempt("idle_time_breakdown", lambda: _records(_first(analysis.get_idle_time_breakdown(visualize=False))))
    attempt("launch_stats", lambda: _launch_summary(analysis.get_cuda_kernel_launch_stats(visualize=False)))
    return result


def _first(value: Any) -> Any:
    """Some HTA calls return ``(frame, stats)``; keep the frame."""
    return value[0] if isinstance(value, tuple) else value


def _launch_summary(stats: dict) -> dict:
    """Medians of HTA's per-launch table (µs): CPU runtime call, GPU kernel, launch delay."""
    frame = stats.get(0) if isinstance(stats, dict) else None
    if frame is None or len(frame) == 0:
        return {"launches": 0}
    out: dict = {"launches": int(len(frame))}
    for column in ("cpu_duration", "gpu_duration", "launch_delay"):
        if column in frame:
            out[f"median_{column}_us"] = float(frame[column].median())
    return out
