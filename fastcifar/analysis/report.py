"""Side-by-side report of a profile folder: ``report.json``, ``report.md`` and PNG charts."""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fastcifar.analysis.categories import CATEGORIES
from fastcifar.analysis.hta_bridge import hta_available, hta_figures
from fastcifar.analysis.metrics import REGIONS, variant_metrics
from fastcifar.analysis.trace import find_variants, list_trace_files, load_run_info, load_trace
from fastcifar.atomic import write_text_atomic
from fastcifar.errors import UserError

# Baseline first (the study's setting, then its old name), then the usual order of the variants.
KNOWN_ORDER = (
    "eager_fp32",
    "eager",
    "eager_bf16_cl",
    "eager_bf16",
    "compiled_bf16_cl",
    "compiled",
    "compiled_bf16",
    "compiled_bf16_cl_triton",
    "compiled_triton",
    "compiled_bf16_cl_triton_cudagraphs",
)
BASELINES = ("eager_fp32", "eager")
RUN_KEYS = (
    "arch",
    "model_kwargs",
    "impl",
    "triton_kernels",
    "spec",
    "batch_size",
    "device",
    "device_name",
    "wall_step_ms",
    "wall_median_step_ms",
    "profiled_median_step_ms",
    "warmup_s",
    "memory",
    "versions",
    "date",
)


def _ordered(names: list[str]) -> list[str]:
    known = [n for n in KNOWN_ORDER if n in names]
    return known + sorted(n for n in names if n not in KNOWN_ORDER)


def _ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num is not None and den else None


def analyze(
    dir: str | os.PathLike,
    top_n: int = 10,
    charts: bool = True,  # noqa: A002 - CLI name
    out: str | os.PathLike | None = None,
) -> dict:
    """Analyse every variant under ``dir``; write ``report.json``, ``report.md`` and charts to ``out``.

    ``out`` defaults to ``dir``. Returns the report dict (the content of ``report.json``).

    Raises:
        UserError: missing/empty/foreign folder, a truncated/invalid/damaged trace or run.json, or
            an output folder that cannot be written (checked before the analysis starts).
    """
    root = Path(dir)
    target = Path(out) if out is not None else root
    folders = find_variants(root)
    check_writable(target)
    names = _ordered(list(folders))
    variants: dict[str, dict] = {}
    for name in names:
        files = list_trace_files(folders[name])
        trace = load_trace(files[0])
        metrics = variant_metrics(trace, top_n=top_n)
        run = load_run_info(folders[name])
        metrics["run"] = {k: run[k] for k in RUN_KEYS if k in run}
        metrics["warnings"] = (
            [f"{len(files)} traces in {folders[name]}; analysed the newest, {files[0].name}"] if len(files) > 1 else []
        )
        hta = hta_figures(trace.path, trace.device_kind)
        metrics["hta"] = hta
        if hta.get("used") and hta.get("temporal_breakdown"):
            metrics["temporal"]["hta"] = hta["temporal_breakdown"]
        variants[name] = metrics

    baseline = next((b for b in BASELINES if b in variants), names[0])
    base = variants[baseline]
    for m in variants.values():
        m["speedup_vs_baseline"] = _ratio(base["median_step_ms"], m["median_step_ms"])
        m["wall_speedup_vs_baseline"] = _ratio(
            base["run"].get("wall_median_step_ms"), m["run"].get("wall_median_step_ms")
        )
    computed = sorted({k for m in variants.values() for k in m["hta"].get("computed", [])})
    report = {
        "folder": str(root),
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "baseline": baseline,
        "variant_order": names,
        "categories": list(CATEGORIES),
        "hta": {
            "installed": hta_available(),
            "computed": computed,
            "note": "HolisticTraceAnalysis computes the GPU temporal, kernel-type and idle-time breakdowns and "
            "launch statistics; step attribution, categories, top kernels, data wait, memory and the "
            "SK select / Z-pool regions are computed by fastcifar.analysis.metrics.",
        },
        "variants": variants,
    }
    try:
        report["charts"] = write_charts(report, target) if charts else []
        write_text_atomic(target / "report.json", json.dumps(report, indent=2, default=str) + "\n")
        write_text_atomic(target / "report.md", render_markdown(report))
    except OSError as err:
        raise _unwritable(target, err) from None
    return report


def _unwritable(target: Path, err: OSError) -> UserError:
    return UserError(
        f"cannot write the report into {str(target)!r} ({err.strerror or err}); "
        "pass --out with a writable folder (the traces are only read)."
    )


def check_writable(target: Path) -> None:
    """Fail before any analysis when ``target`` cannot take the report (creating it if missing)."""
    try:
        target.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".report-probe-", dir=target)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise _unwritable(target, err) from None


# ---------------------------------------------------------------------------------------------
# Output helpers
# ---------------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{suffix}"
    return f"{value}{suffix}"


def _mib(value: int | None) -> str:
    return "–" if value is None else f"{value / 2**20:,.1f}"


def _short(name: str, width: int = 90) -> str:
    name = name.replace("|", "\\|")
    return name if len(name) <= width else name[: width - 1] + "…"


def render_markdown(report: dict) -> str:
    """The report as Markdown tables (every figure also in report.json)."""
    names = report["variant_order"]
    v = report["variants"]
    base = report["baseline"]
    kind = {v[n]["device_kind"] for n in names}
    unit = "kernel" if kind == {"cuda"} else "op"
    lines = [
        f"# Profile report: {report['folder']}",
        "",
        f"Generated {report['generated']}. Baseline for speedups: `{base}`. Device work = "
        + (
            "GPU kernels/memcpy/memset."
            if kind == {"cuda"}
            else "CPU operator self time (no CUDA kernels in the traces)."
        ),
        "",
        "## Summary (per step, medians over the profiled steps)",
        "",
        "| variant | impl / kernels | step ms (trace) | speedup | step ms (wall) | wall speedup "
        "| busy ms | idle ms | busy % "
        f"| {unit}s / step | host overhead ms | data wait ms | peak alloc MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in names:
        m, run = v[n], v[n]["run"]
        t = m["temporal"]
        lines.append(
            f"| {n} | {run.get('impl') or '–'} / {run.get('triton_kernels', '–')} | {_fmt(m['median_step_ms'])} "
            f"| {_fmt(m['speedup_vs_baseline'], 2, '×')} | {_fmt(run.get('wall_median_step_ms'))} "
            f"| {_fmt(m['wall_speedup_vs_baseline'], 2, '×')} | {_fmt(t['busy_ms_per_step'])} "
            f"| {_fmt(t['idle_ms_per_step'])} "
            f"| {_fmt(t['busy_pct'], 1)} | {_fmt(m['launches_per_step'], 0)} "
            f"| {_fmt(m['host']['overhead_ms_per_step'])} "
            f"| {_fmt(m['data']['wait_ms_per_step'])} | {_mib(m['memory']['peak_allocated_bytes'])} |"
        )
    lines += [
        "",
        "Step ms (trace) is the `ProfilerStep#` range (each step ends with a device synchronisation); step ms (wall) "
        "is timed without the profiler (run.json). Busy = union of device work in the step over all "
        + ("streams" if kind == {"cuda"} else "threads")
        + " (never more than the step); idle = the rest. "
        "Host overhead: " + "; ".join(sorted({v[n]["host"]["definition"] for n in names})) + ". "
        "Data wait = host time in the `data` range.",
        "",
        f"## {unit.capitalize()} time by category (ms per step, share of {unit} time"
        + ("; summed over threads, so it can exceed the step)" if kind != {"cuda"} else ")"),
        "",
        "| variant | " + " | ".join(report["categories"]) + " | total |",
        "|---|" + "---|" * (len(report["categories"]) + 1),
    ]
    for n in names:
        m = v[n]
        cells = [f"{m['category_ms'][c] / m['steps']:.2f} ({m['category_pct'][c]:.0f}%)" for c in report["categories"]]
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {m['kernel_total_ms'] / m['steps']:.2f} |")
    lines += ["", "## SK select and Z-pool (the steps the Triton kernels replace), ms per step", ""]
    lines += [
        "| variant | region | calls / step | forward | backward | by kernel name | total | source |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in names:
        for region in REGIONS:
            r = v[n]["regions"][region]
            lines.append(
                f"| {n} | {region} | {_fmt(r['calls_per_step'], 1)} | {_fmt(r['forward_ms_per_step'], 3)} "
                f"| {_fmt(r['backward_ms_per_step'], 3)} | {_fmt(r['by_kernel_name_ms_per_step'], 3)} "
                f"| {_fmt(r['total_ms_per_step'], 3)} | {r['source']} |"
            )
    layer_rows = [(n, k, s) for n in names for k, s in v[n]["layers"].items()]
    if layer_rows:
        lines += [
            "",
            "## Attention and dense layers (forward ranges, eager runs only; nested kinds overlap)",
            "",
            "| variant | layer kind | calls / step | host ms / step | device ms / step |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {n} | {k} | {_fmt(s['calls_per_step'], 1)} | {_fmt(s['host_ms_per_step'])} "
            f"| {_fmt(s['device_ms_per_step'])} |"
            for n, k, s in layer_rows
        ]
    for n in names:
        m = v[n]
        lines += [
            "",
            f"## Top {unit}s: {n}",
            "",
            f"| {unit} | category | calls | ms / step | share |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| `{_short(k['name'])}` | {k['category']} | {k['calls']} | {k['total_ms'] / m['steps']:.3f} "
            f"| {k['share_pct']:.1f}% |"
            for k in m["top_kernels"]
        ]
    lines += ["", "## HolisticTraceAnalysis", ""]
    hta = report["hta"]
    lines.append(
        f"Installed: {'yes' if hta['installed'] else 'no'}. "
        f"Computed here: {', '.join(hta['computed']) or 'nothing'}. {hta['note']}"
    )
    for n in names:
        h = v[n]["hta"]
        if not h.get("used"):
            lines.append(f"- {n}: not used ({h.get('reason')}).")
            continue
        lines.append(f"- {n}: " + _hta_summary(h))
        for key, err in h.get("errors", {}).items():
            lines.append(f"  - {key} failed: {err}")
    warnings = [(n, w) for n in names for w in v[n]["warnings"]]
    if warnings:
        lines += ["", "## Warnings", ""] + [f"- {n}: {w}" for n, w in warnings]
    if report["charts"]:
        lines += ["", "## Charts", ""] + [f"![{Path(c).stem}]({c})" for c in report["charts"]]
    return "\n".join(lines) + "\n"


def _hta_summary(h: dict) -> str:
    """HTA's figures for one variant in one line (full tables in report.json)."""
    parts = []
    for row in h.get("temporal_breakdown", [])[:1]:
        parts.append(
            "temporal: idle {:.1f}%, compute {:.1f}%, non-compute {:.1f}%".format(
                row.get("idle_time_pctg", float("nan")),
                row.get("compute_time_pctg", float("nan")),
                row.get("non_compute_time_pctg", float("nan")),
            )
        )
    if h.get("kernel_type_breakdown"):
        parts.append(
            "kernel types: " + ", ".join(f"{r['kernel_type']} {r['percentage']}%" for r in h["kernel_type_breakdown"])
        )
    if h.get("idle_time_breakdown"):
        parts.append(
            "idle: "
            + ", ".join(f"{r['idle_category']} {r['idle_time'] / 1e3:.2f} ms" for r in h["idle_time_breakdown"])
        )
    stats = h.get("launch_stats") or {}
    if stats.get("launches"):
        parts.append(
            f"launches: {stats['launches']}, "
            f"median launch delay {stats.get('median_launch_delay_us', float('nan')):.1f} µs, "
            f"median runtime call {stats.get('median_cpu_duration_us', float('nan')):.1f} µs"
        )
    return "; ".join(parts) or "no figures"


def write_charts(report: dict, root: Path) -> list[str]:
    """Bar charts (matplotlib Agg); returns the file names written into ``root``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = report["variant_order"]
    v = report["variants"]
    written = []

    def save(fig: Any, filename: str) -> None:
        tmp = root / f".{filename}.tmp.png"
        try:
            fig.tight_layout()
            fig.savefig(tmp, dpi=110)
            os.replace(tmp, root / filename)
        finally:
            plt.close(fig)
            tmp.unlink(missing_ok=True)
        written.append(filename)

    x = range(len(names))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    trace_ms = [v[n]["median_step_ms"] for n in names]
    wall_ms = [v[n]["run"].get("wall_median_step_ms") or 0.0 for n in names]
    ax.bar([i - 0.2 for i in x], trace_ms, width=0.4, label="profiled (trace)")
    ax.bar([i + 0.2 for i in x], wall_ms, width=0.4, label="wall clock")
    for i, n in enumerate(names):
        s = v[n]["speedup_vs_baseline"]
        ax.annotate(f"{s:.2f}×" if s else "", (i - 0.2, trace_ms[i]), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(x), names)
    ax.set_ylabel("median step (ms)")
    ax.set_title("Step time")
    ax.legend()
    save(fig, "step_time.png")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    busy = [v[n]["temporal"]["busy_ms_per_step"] for n in names]
    idle = [v[n]["temporal"]["idle_ms_per_step"] for n in names]
    ax.bar(list(x), busy, label="busy")
    ax.bar(list(x), idle, bottom=busy, label="idle")
    ax.set_xticks(list(x), names)
    ax.set_ylabel("ms per step")
    ax.set_title("Device busy vs idle")
    ax.legend()
    save(fig, "temporal.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    bottom = [0.0] * len(names)
    for cat in report["categories"]:
        values = [v[n]["category_ms"][cat] / v[n]["steps"] for n in names]
        ax.bar(list(x), values, bottom=bottom, label=cat)
        bottom = [b + val for b, val in zip(bottom, values)]
    ax.set_xticks(list(x), names)
    ax.set_ylabel("ms per step")
    ax.set_title("Device time by category")
    ax.legend(fontsize=7)
    save(fig, "categories.png")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / max(len(REGIONS), 1)
    for j, region in enumerate(REGIONS):
        values = [v[n]["regions"][region]["total_ms_per_step"] or 0.0 for n in names]
        ax.bar([i - 0.4 + width * (j + 0.5) for i in x], values, width=width, label=region)
    ax.set_xticks(list(x), names)
    ax.set_ylabel("ms per step (forward + backward)")
    ax.set_title("SK select and Z-pool")
    ax.legend()
    save(fig, "regions.png")
    return written
