"""One variant's figures from its trace: everything the report shows, computed from raw events.

Two modes, chosen by the trace:

- GPU traces (CUDA kernels present): the "device work" is the GPU kernels, memcpys and memsets;
  a kernel belongs to the step (and to a ``data`` / ``sk_select`` / ... range) in which the host
  *launched* it, found through the runtime event with the same correlation id.
- CPU traces: the "device work" is the CPU operators, each counted by its *self* time (its
  duration minus that of the events nested in it), so nothing is counted twice within a thread.
  Operator time by category and top operators sum these self times over every thread (autograd's
  and the main one may overlap); busy time is the union of operator intervals over all threads,
  so it never exceeds the step. Python and framework time outside any operator on any thread is
  the step's idle (host overhead) time.

All times in the returned dicts are milliseconds unless a key says otherwise.
"""

from __future__ import annotations

import bisect
import re
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from fastcifar.profiling.categories import CATEGORIES, categorise, is_inductor_kernel_range
from fastcifar.profiling.trace import Event, Trace

# Regions whose time the Triton kernels target: host ranges / ops by name, device kernels by name.
REGIONS = {
    "sk_select": {
        "host": re.compile(r"^(?:sk_select|(?:fastcifar|kernels)::sk_select)$"),
        "host_backward": re.compile(r"^(?:fastcifar|kernels)::sk_select_backward$"),
        "kernel": re.compile(r"sk_select", re.IGNORECASE),
    },
    "zpool": {
        "host": re.compile(r"^(?:zpool|(?:fastcifar|kernels)::zpool)$"),
        "host_backward": re.compile(r"^(?:fastcifar|kernels)::zpool_backward$"),
        "kernel": re.compile(r"zpool", re.IGNORECASE),
    },
}
LAYER_KINDS = ("SKConv", "TripletAttention", "dense_layer")
LAUNCH_API = re.compile(r"launch|memcpy|memset", re.IGNORECASE)
_EPS = 1e-3  # microseconds of slack for rounding in nested timestamps


@dataclass
class Work:
    """One unit of device work: a GPU kernel, or a CPU operator's self time."""

    name: str
    category: str
    ts: float  # when it ran (GPU) / when the operator started (CPU)
    dur: float  # µs of device time attributed to it
    end: float  # end of its interval (for busy-time unions)
    step: int  # index of the profiler step it belongs to
    tid: object  # host thread that launched / ran it
    host_ts: float  # host timestamp used for range membership (launch time on GPU)
    leaf: bool = True  # counts as a launch (GPU kernel; CPU operator with no operator inside)


@dataclass
class Intervals:
    """Disjoint host time intervals per thread, for "was this launched inside range X?"."""

    by_tid: dict = field(default_factory=dict)

    @classmethod
    def of(cls, events: Iterable[Event]) -> Intervals:
        grouped: dict = defaultdict(list)
        for e in events:
            grouped[e.tid].append((e.ts, e.end))
        merged: dict = {}
        for tid, spans in grouped.items():
            spans.sort()
            out: list[list[float]] = []
            for start, end in spans:
                if out and start <= out[-1][1]:
                    out[-1][1] = max(out[-1][1], end)
                else:
                    out.append([start, end])
            merged[tid] = ([s for s, _ in out], [e for _, e in out])
        return cls(merged)

    def contains(self, tid: object, ts: float) -> bool:
        starts_ends = self.by_tid.get(tid)
        if not starts_ends:
            return False
        starts, ends = starts_ends
        i = bisect.bisect_right(starts, ts + _EPS) - 1
        return i >= 0 and ts < ends[i] - _EPS

    def total(self) -> float:
        return sum(e - s for starts, ends in self.by_tid.values() for s, e in zip(starts, ends))


def _median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def _union_length(spans: list[tuple[float, float]]) -> float:
    """Length covered by the union of ``(start, end)`` spans."""
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(spans):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def _step_index(starts: list[float], steps: list[Event], ts: float) -> int:
    """Index of the step whose range holds ``ts``, or -1."""
    i = bisect.bisect_right(starts, ts + _EPS) - 1
    if i >= 0 and ts < steps[i].end - _EPS:
        return i
    return -1


def nest(host: list[Event]) -> tuple[list[float], list[int], list[bool]]:
    """Per-event self time, parent index and "has a child operator" flag, nesting per thread."""
    self_time = [e.dur for e in host]
    parent = [-1] * len(host)
    has_op_child = [False] * len(host)
    by_tid: dict = defaultdict(list)
    for i, e in enumerate(host):
        by_tid[e.tid].append(i)
    for indices in by_tid.values():
        indices.sort(key=lambda i: (host[i].ts, -host[i].dur))
        stack: list[int] = []
        for i in indices:
            e = host[i]
            while stack and e.ts >= host[stack[-1]].end - _EPS:
                stack.pop()
            if stack:
                p = stack[-1]
                parent[i] = p
                self_time[p] -= min(e.dur, host[p].end - e.ts)
                if _is_work_event(e):
                    has_op_child[p] = True
            stack.append(i)
    return [max(t, 0.0) for t in self_time], parent, has_op_child


def _is_work_event(e: Event) -> bool:
    """CPU mode: operators and Inductor C++ kernel ranges are work; other annotations are not."""
    return e.cat == "cpu_op" or (e.cat == "user_annotation" and is_inductor_kernel_range(e.name))


def collect_work(trace: Trace) -> list[Work]:
    """The trace's device work attributed to profiler steps (work outside every step is dropped)."""
    steps = trace.steps
    starts = [s.ts for s in steps]
    work: list[Work] = []
    if trace.device_kind == "cuda":
        launch_by_corr = {}
        for r in trace.runtime:
            corr = r.args.get("correlation")
            if corr is not None:
                launch_by_corr[corr] = r
        for k in trace.device:
            launch = launch_by_corr.get(k.args.get("correlation"))
            host_ts, tid = (launch.ts, launch.tid) if launch is not None else (k.ts, None)
            step = _step_index(starts, steps, host_ts)
            if step < 0:
                continue
            work.append(Work(k.name, categorise(k.name), k.ts, k.dur, k.end, step, tid, host_ts, k.cat == "kernel"))
        return work
    host = [e for e in trace.host if not e.name.startswith("ProfilerStep#")]
    self_time, _parent, has_op_child = nest(host)
    for i, e in enumerate(host):
        if not _is_work_event(e):
            continue
        step = _step_index(starts, steps, e.ts)
        if step < 0:
            continue
        work.append(Work(e.name, categorise(e.name), e.ts, self_time[i], e.end, step, e.tid, e.ts, not has_op_child[i]))
    return work


def _region_intervals(
    trace: Trace, pattern: re.Pattern, backward_pattern: re.Pattern
) -> tuple[Intervals, Intervals, int]:
    """Forward and backward host intervals of a region, and the number of forward calls.

    Forward: host events whose name matches ``pattern``. Backward: the region's own backward op
    (``backward_pattern``) and autograd ``evaluate_function`` events whose sequence number is that
    of an operator run inside the forward intervals.
    """
    forward = [e for e in trace.host if pattern.match(e.name)]
    fwd = Intervals.of(forward)
    seqs = {
        e.args["Sequence number"]
        for e in trace.host
        if e.cat == "cpu_op"
        and "Sequence number" in e.args
        and fwd.contains(e.tid, e.ts)
        and not e.name.startswith("autograd::")
    }
    backward = [
        e
        for e in trace.host
        if (e.name.startswith("autograd::engine::evaluate_function") and e.args.get("Sequence number") in seqs)
        or backward_pattern.match(e.name)
    ]
    calls = sum(1 for starts, _ in fwd.by_tid.values() for _ in starts)
    return fwd, Intervals.of(backward), calls


def region_time(trace: Trace, work: list[Work], region: str, n_steps: int) -> dict:
    """Device time inside one region (``sk_select`` or ``zpool``), forward and backward, per step."""
    spec = REGIONS[region]
    fwd, bwd, calls = _region_intervals(trace, spec["host"], spec["host_backward"])
    fwd_us = bwd_us = 0.0
    by_name = 0.0
    for w in work:
        if fwd.contains(w.tid, w.host_ts):
            fwd_us += w.dur
        elif bwd.contains(w.tid, w.host_ts):
            bwd_us += w.dur
        elif trace.device_kind == "cuda" and spec["kernel"].search(w.name):
            # Kernels launched from a compiled graph carry no range: recognise them by name.
            by_name += w.dur
    found = calls > 0 or by_name > 0 or bwd_us > 0
    sources = [s for s, ok in (("host ranges/ops", calls > 0 or bwd_us > 0), ("kernel names", by_name > 0)) if ok]
    return {
        "found": found,
        "source": " + ".join(sources)
        if found
        else "not separable (no range, op or kernel of this name; fused by Inductor?)",
        "calls_per_step": calls / n_steps if n_steps else 0.0,
        "forward_ms_per_step": fwd_us / 1e3 / n_steps if found else None,
        "backward_ms_per_step": bwd_us / 1e3 / n_steps if found else None,
        "by_kernel_name_ms_per_step": by_name / 1e3 / n_steps if found else None,
        "total_ms_per_step": (fwd_us + bwd_us + by_name) / 1e3 / n_steps if found else None,
    }


def layer_time(trace: Trace, work: list[Work], n_steps: int) -> dict:
    """Forward time per attention-layer kind from the eager ``<Kind>:<path>`` ranges (inclusive)."""
    out = {}
    for kind in LAYER_KINDS:
        events = [e for e in trace.host if e.cat == "user_annotation" and e.name.startswith(kind + ":")]
        if not events:
            continue
        ranges = Intervals.of(events)
        device_us = sum(w.dur for w in work if ranges.contains(w.tid, w.host_ts))
        out[kind] = {
            "calls_per_step": len(events) / n_steps,
            "host_ms_per_step": ranges.total() / 1e3 / n_steps,
            "device_ms_per_step": device_us / 1e3 / n_steps,
        }
    return out


def peak_memory(trace: Trace) -> dict:
    """Peak allocator bytes seen by the profiler during the active steps (device of the trace)."""
    device_type = 1 if trace.device_kind == "cuda" else 0
    values = [
        m.get("Total Allocated")
        for m in trace.memory
        if m.get("Device Type") == device_type and isinstance(m.get("Total Allocated"), (int, float))
    ]
    reserved = [
        m.get("Total Reserved")
        for m in trace.memory
        if m.get("Device Type") == device_type and isinstance(m.get("Total Reserved"), (int, float))
    ]
    return {
        "peak_allocated_bytes": int(max(values)) if values else None,
        "peak_reserved_bytes": int(max(reserved)) if reserved else None,
        "events": len(values),
    }


def temporal_breakdown(trace: Trace, work: list[Work]) -> dict:
    """Busy and idle time per step.

    Busy = the union of the work intervals of every stream (GPU) or thread (CPU) in each step's
    window, so it never exceeds the window. On a GPU the window runs on to the last kernel the step
    launched; on a CPU work cannot outlive the step's range.
    """
    steps = trace.steps
    n = len(steps)
    spans: list[list[tuple[float, float]]] = [[] for _ in range(n)]
    for w in work:
        spans[w.step].append((w.ts, w.end))
    busy_us = [0.0] * n
    window_us = [s.dur for s in steps]
    for i, s in enumerate(steps):
        end = max([s.end] + [e for _, e in spans[i]]) if trace.device_kind == "cuda" else s.end
        window_us[i] = end - s.ts
        busy_us[i] = _union_length([(max(a, s.ts), min(b, end)) for a, b in spans[i] if min(b, end) > max(a, s.ts)])
    idle_us = [max(wi - b, 0.0) for wi, b in zip(window_us, busy_us)]
    return {
        "window_ms": sum(window_us) / 1e3,
        "busy_ms": sum(busy_us) / 1e3,
        "idle_ms": sum(idle_us) / 1e3,
        "busy_ms_per_step": sum(busy_us) / 1e3 / n,
        "busy_ms_by_step": [b / 1e3 for b in busy_us],
        "window_ms_by_step": [w / 1e3 for w in window_us],
        "idle_ms_per_step": sum(idle_us) / 1e3 / n,
        "busy_pct": 100.0 * sum(busy_us) / sum(window_us) if sum(window_us) else None,
        "source": "fastcifar",
        "definition": "busy = union over "
        + ("streams of GPU kernels/memcpy/memset" if trace.device_kind == "cuda" else "threads of CPU operators")
        + " in the step window; idle = the rest of the window",
    }


def device_time(work: list[Work], n_steps: int, top_n: int) -> dict:
    """Work time by category and by name (the ``top_n`` largest), and launches per step."""
    by_category = {c: 0.0 for c in CATEGORIES}
    by_name: dict[str, list[float]] = {}
    launches = [0] * n_steps
    for w in work:
        by_category[w.category] += w.dur
        entry = by_name.setdefault(w.name, [0.0, 0])
        entry[0] += w.dur
        entry[1] += 1
        if w.leaf:
            launches[w.step] += 1
    total_us = sum(by_category.values())
    top = sorted(by_name.items(), key=lambda kv: kv[1][0], reverse=True)[:top_n]
    return {
        "kernel_total_ms": total_us / 1e3,
        "category_ms": {c: v / 1e3 for c, v in by_category.items()},
        "category_pct": {c: (100.0 * v / total_us if total_us else 0.0) for c, v in by_category.items()},
        "top_kernels": [
            {
                "name": name,
                "category": categorise(name),
                "total_ms": us / 1e3,
                "calls": calls,
                "share_pct": 100.0 * us / total_us if total_us else 0.0,
            }
            for name, (us, calls) in top
        ],
        "launches_per_step": _median([float(x) for x in launches]),
        "launches": launches,
    }


def host_overhead(trace: Trace, idle_ms: float) -> dict:
    """Host time per step: operators on any thread and launch API calls (GPU), or the idle time (CPU)."""
    steps = trace.steps
    n = len(steps)
    starts = [s.ts for s in steps]
    launch_api_us = sum(
        r.dur for r in trace.runtime if LAUNCH_API.search(r.name) and _step_index(starts, steps, r.ts) >= 0
    )
    if trace.device_kind == "cuda":
        host_spans = [(e.ts, e.end) for e in trace.host if e.cat == "cpu_op" and _step_index(starts, steps, e.ts) >= 0]
        host_ms_per_step = _union_length(host_spans) / 1e3 / n
        host_definition = (
            "host time inside CPU operators per step, on any thread (dispatch + launches); "
            "the device idles when this exceeds its busy time"
        )
    else:
        host_ms_per_step = idle_ms / n
        host_definition = "step time outside any CPU operator (Python and framework overhead)"
    return {
        "overhead_ms_per_step": host_ms_per_step,
        "launch_api_ms_per_step": launch_api_us / 1e3 / n if trace.device_kind == "cuda" else None,
        "definition": host_definition,
    }


def data_wait(trace: Trace, work: list[Work], n_steps: int) -> dict:
    """Host time in the ``data`` ranges and the device work launched inside them, per step."""
    data_ranges = Intervals.of(e for e in trace.host if e.name == "data" and e.cat == "user_annotation")
    data_device_us = sum(w.dur for w in work if data_ranges.contains(w.tid, w.host_ts))
    return {
        "wait_ms_per_step": data_ranges.total() / 1e3 / n_steps,
        "device_ms_per_step": data_device_us / 1e3 / n_steps,
    }


def variant_metrics(trace: Trace, top_n: int = 10) -> dict:
    """Every figure of one variant (see the module docstring for the two modes)."""
    n = len(trace.steps)
    work = collect_work(trace)
    step_ms = [s.dur / 1e3 for s in trace.steps]
    temporal = temporal_breakdown(trace, work)
    return {
        "device_kind": trace.device_kind,
        "trace": trace.path.name,
        "steps": n,
        "step_ms": step_ms,
        "median_step_ms": _median(step_ms),
        "temporal": temporal,
        **device_time(work, n, top_n),
        "host": host_overhead(trace, temporal["idle_ms"]),
        "data": data_wait(trace, work, n),
        "memory": peak_memory(trace),
        "regions": {name: region_time(trace, work, name, n) for name in REGIONS},
        "layers": layer_time(trace, work, n),
    }
