"""Find the variants of a profile folder and load their PyTorch profiler (Kineto) traces.

A profile folder, as ``python -m fastcifar.profile`` writes it::

    DIR/<variant>/<worker>.<timestamp>.pt.trace.json   Chrome/Perfetto JSON (TensorBoard reads it)
    DIR/<variant>/run.json                             config + measured step times + peak memory

Trace JSON is parsed here into plain event lists; every problem a user can fix (missing folder,
foreign folder, truncated JSON) is a :class:`UserError` with what to do.
"""

from __future__ import annotations

import gzip
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastcifar.errors import UserError

TRACE_SUFFIXES = (".pt.trace.json", ".pt.trace.json.gz")
HOST_CATS = {"cpu_op", "user_annotation", "python_function"}
DEVICE_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}
RUNTIME_CATS = {"cuda_runtime", "cuda_driver"}
STEP_PREFIX = "ProfilerStep#"


@dataclass
class Event:
    """One complete ('X') trace event; times in microseconds."""

    name: str
    cat: str
    ts: float
    dur: float
    pid: Any
    tid: Any
    args: dict

    @property
    def end(self) -> float:
        return self.ts + self.dur


@dataclass
class Trace:
    """The events of one profiler trace that the analysis needs."""

    path: Path
    steps: list[Event]  # ProfilerStep#N ranges, sorted by time
    host: list[Event]  # cpu_op / user_annotation / python_function events of every host thread
    device: list[Event]  # GPU kernels, memcpy, memset
    runtime: list[Event]  # CUDA runtime / driver calls (launches)
    memory: list[dict]  # args of '[memory]' instant events, with 'ts' added
    meta: dict = field(default_factory=dict)  # top-level keys other than traceEvents

    @property
    def device_kind(self) -> str:
        """``"cuda"`` when the trace has GPU kernels, else ``"cpu"`` (CPU ops stand in for kernels)."""
        return "cuda" if any(e.cat == "kernel" for e in self.device) else "cpu"


def list_trace_files(folder: Path) -> list[Path]:
    """Trace files directly inside ``folder``, newest first."""
    files = [p for p in folder.iterdir() if p.is_file() and p.name.endswith(TRACE_SUFFIXES)]
    return sorted(files, key=lambda p: (p.stat().st_mtime, p.name), reverse=True)


def find_variants(root: str | Path) -> dict[str, Path]:
    """Map variant name -> its folder, for every subfolder of ``root`` holding a trace.

    Raises:
        UserError: ``root`` is missing, not a folder, or holds no profiler traces.
    """
    root = Path(root)
    if not root.exists():
        raise UserError(
            f"profile folder {str(root)!r} does not exist; create it with `python -m fastcifar.profile --out {root}`."
        )
    if not root.is_dir():
        raise UserError(f"{str(root)!r} is not a folder; pass the --out folder of `python -m fastcifar.profile`.")
    variants = {sub.name: sub for sub in sorted(root.iterdir()) if sub.is_dir() and list_trace_files(sub)}
    if not variants:
        raise UserError(
            f"no profiler traces under {str(root)!r} (expected <variant>/*.pt.trace.json); "
            f"run `python -m fastcifar.profile --out {root}` first."
        )
    return variants


def _read_json(path: Path) -> dict:
    """Parse a (possibly gzipped) JSON file; a truncated or foreign file is a UserError."""
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                data = json.load(fh)
        else:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, EOFError, gzip.BadGzipFile) as err:
        raise UserError(
            f"trace {str(path)!r} is unreadable, truncated or not valid JSON ({err.__class__.__name__}: {err}); "
            "profile that variant again."
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("traceEvents"), list):
        raise UserError(
            f"{str(path)!r} is not a PyTorch profiler trace (no 'traceEvents' list); "
            "pass a folder written by `python -m fastcifar.profile`."
        )
    return data


def load_trace(path: str | Path) -> Trace:
    """Load one trace file into a :class:`Trace`.

    Raises:
        UserError: the JSON is truncated/invalid, foreign, or has no ``ProfilerStep#`` ranges.
    """
    path = Path(path)
    data = _read_json(path)
    steps: list[Event] = []
    host: list[Event] = []
    device: list[Event] = []
    runtime: list[Event] = []
    memory: list[dict] = []
    for raw in data["traceEvents"]:
        if not isinstance(raw, dict):
            continue
        ph, cat, name = raw.get("ph"), raw.get("cat", ""), raw.get("name", "")
        if ph == "i" and name == "[memory]":
            try:
                memory.append({**(raw.get("args") or {}), "ts": float(raw.get("ts", 0.0))})
            except (TypeError, ValueError):
                raise UserError(
                    f"trace {str(path)!r} has a malformed memory event {raw!r:.200}; profile again."
                ) from None
            continue
        if ph != "X" or "ts" not in raw:
            continue
        try:
            args = raw.get("args") or {}
            if not isinstance(args, dict):
                raise TypeError("args is not an object")
            event = Event(
                str(name), str(cat), float(raw["ts"]), float(raw.get("dur", 0.0)), raw.get("pid"), raw.get("tid"), args
            )
        except (TypeError, ValueError):
            raise UserError(f"trace {str(path)!r} has a malformed event {raw!r:.200}; profile again.") from None
        if cat in HOST_CATS:
            host.append(event)
            if event.name.startswith(STEP_PREFIX) and cat == "user_annotation":
                steps.append(event)
        elif cat in DEVICE_CATS:
            device.append(event)
        elif cat in RUNTIME_CATS:
            runtime.append(event)
    damaged = [e for e in (*host, *device, *runtime) if not (math.isfinite(e.ts) and math.isfinite(e.dur)) or e.dur < 0]
    if damaged:
        first = damaged[0]
        raise UserError(
            f"trace {str(path)!r} has {len(damaged)} event(s) with a negative or non-finite time "
            f"(first: {first.name[:60]!r}, ts {first.ts}, dur {first.dur}); the file is damaged: profile again."
        )
    if not steps:
        raise UserError(
            f"trace {str(path)!r} has no ProfilerStep# ranges; profile with a torch.profiler "
            "schedule and prof.step() (as `python -m fastcifar.profile` does)."
        )
    for events in (steps, host, device, runtime):
        events.sort(key=lambda e: (e.ts, -e.dur))
    memory.sort(key=lambda m: m["ts"])
    meta = {k: v for k, v in data.items() if k != "traceEvents"}
    return Trace(path, steps, host, device, runtime, memory, meta)


# run.json keys the report reads, with the types they must have (None is allowed for each).
RUN_TYPES: dict[str, tuple[type, ...]] = {
    "wall_step_ms": (list,),
    "wall_median_step_ms": (int, float),
    "profiled_median_step_ms": (int, float),
    "warmup_s": (int, float),
    "batch_size": (int,),
    "memory": (dict,),
    "model_kwargs": (dict,),
}


def load_run_info(folder: Path) -> dict:
    """The variant's ``run.json`` (config, wall-clock step times, peak memory), or ``{}`` if absent.

    Raises:
        UserError: the file is unreadable, not UTF-8 JSON, not an object, or a key the report
            reads has the wrong type.
    """
    path = folder / "run.json"
    if not path.exists():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(
            f"{str(path)!r} is unreadable, truncated or not UTF-8 JSON ({type(err).__name__}); "
            "profile that variant again."
        ) from None
    if not isinstance(info, dict):
        raise UserError(f"{str(path)!r} holds a {type(info).__name__}, not a JSON object; profile that variant again.")
    for key, types in RUN_TYPES.items():
        value = info.get(key)
        bad = value is not None and (not isinstance(value, types) or isinstance(value, bool))
        if not bad and key == "wall_step_ms" and value is not None:
            bad = not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        if not bad and isinstance(value, float):
            bad = not math.isfinite(value) or value < 0
        if bad:
            raise UserError(f"{str(path)!r}: {key!r} is {value!r:.80}, not a valid value; profile that variant again.")
    return info
