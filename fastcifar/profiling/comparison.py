"""Side-by-side report of a profile folder: ``report.json``, ``report.md`` and PNG charts."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fastcifar.atomic import folder_write_problem, write_json_atomic, write_text_atomic
from fastcifar.errors import UserError
from fastcifar.locks import hold_folder
from fastcifar.profiling.categories import CATEGORIES
from fastcifar.profiling.hta_bridge import hta_available, hta_figures
from fastcifar.profiling.trace import find_variants, list_trace_files, load_run_info, load_trace
from fastcifar.profiling.trace_metrics import REGIONS, variant_metrics

# The baseline (the study's setting) first, then each step of the fast path in the order it adds
# them (bf16, compile, Triton kernels, CUDA graphs). The names of fastcifar.training.variant.VARIANTS,
# spelled out because reading traces must not need torch.
BASELINE = "eager_fp32"
KNOWN_ORDER = (
    BASELINE,
    "eager_bf16_cl",
    "eager_bf16",
    "compiled_bf16_cl",
    "compiled_bf16",
    "compiled_bf16_cl_triton",
    "compiled_bf16_cl_triton_cudagraphs",
)
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
    # One writer per folder: refused while a profile (or another analysis) still writes there.
    with hold_folder(target, "fastcifar.analyze"):
        names = _ordered(list(folders))
        variants: dict[str, dict] = {}
        for name in names:
            files = list_trace_files(folders[name])
            trace = load_trace(files[0])
            metrics = variant_metrics(trace, top_n=top_n)
            run = load_run_info(folders[name])
            metrics["run"] = {k: run[k] for k in RUN_KEYS if k in run}
            metrics["warnings"] = (
                [f"{len(files)} traces in {folders[name]}; analysed the newest, {files[0].name}"]
                if len(files) > 1
                else []
            )
            hta = hta_figures(trace.path, trace.device_kind)
            metrics["hta"] = hta
            if hta.get("used") and hta.get("temporal_breakdown"):
                metrics["temporal"]["hta"] = hta["temporal_breakdown"]
            variants[name] = metrics

        baseline = BASELINE if BASELINE in variants else names[0]
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
                "SK select / Z-pool regions are computed by fastcifar.profiling.trace_metrics.",
            },
            "variants": variants,
        }
        try:
            report["charts"] = write_charts(report, target) if charts else []
            write_json_atomic(target / "report.json", report)
            write_text_atomic(target / "report.md", render_markdown(report))
        except OSError as err:
            raise _unwritable(target, err) from None
        return report


def _unwritable(target: Path, why: OSError | str) -> UserError:
    why = why.strerror or str(why) if isinstance(why, OSError) else why
    return UserError(
        f"cannot write the report into {str(target)!r} ({why}); "
        "pass --out with a writable folder (the traces are only read)."
    )


def check_writable(target: Path) -> None:
    """Fail before any analysis when ``target`` cannot take the report (creating it if missing)."""
    problem = folder_write_problem(target)
    if problem is not None:
        raise _unwritable(target, problem)


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


def _device_unit(report: dict) -> tuple[bool, str]:
    """Whether every variant ran on a GPU, and what its device work is called ("kernel" or "op")."""
    on_gpu = {m["device_kind"] for m in report["variants"].values()} == {"cuda"}
    return on_gpu, "kernel" if on_gpu else "op"


def _summary_section(report: dict) -> list[str]:
    names, v = report["variant_order"], report["variants"]
    on_gpu, unit = _device_unit(report)
    lines = [
        f"# Profile report: {report['folder']}",
        "",
        f"Generated {report['generated']}. Baseline for speedups: `{report['baseline']}`. Device work = "
        + ("GPU kernels/memcpy/memset." if on_gpu else "CPU operator self time (no CUDA kernels in the traces)."),
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
    return lines + [
        "",
        "Step ms (trace) is the `ProfilerStep#` range (each step ends with a device synchronisation); step ms (wall) "
        "is timed without the profiler (run.json). Busy = union of device work in the step over all "
        + ("streams" if on_gpu else "threads")
        + " (never more than the step); idle = the rest. "
        "Host overhead: " + "; ".join(sorted({v[n]["host"]["definition"] for n in names})) + ". "
        "Data wait = host time in the `data` range.",
    ]


def _category_section(report: dict) -> list[str]:
    on_gpu, unit = _device_unit(report)
    categories = report["categories"]
    lines = [
        "",
        f"## {unit.capitalize()} time by category (ms per step, share of {unit} time"
        + (")" if on_gpu else "; summed over threads, so it can exceed the step)"),
        "",
        "| variant | " + " | ".join(categories) + " | total |",
        "|---|" + "---|" * (len(categories) + 1),
    ]
    for n in report["variant_order"]:
        m = report["variants"][n]
        cells = [f"{m['category_ms'][c] / m['steps']:.2f} ({m['category_pct'][c]:.0f}%)" for c in categories]
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {m['kernel_total_ms'] / m['steps']:.2f} |")
    return lines


def _regions_section(report: dict) -> list[str]:
    lines = [
        "",
        "## SK select and Z-pool (the steps the Triton kernels replace), ms per step",
        "",
        "| variant | region | calls / step | forward | backward | by kernel name | total | source |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in report["variant_order"]:
        for region in REGIONS:
            r = report["variants"][n]["regions"][region]
            lines.append(
                f"| {n} | {region} | {_fmt(r['calls_per_step'], 1)} | {_fmt(r['forward_ms_per_step'], 3)} "
                f"| {_fmt(r['backward_ms_per_step'], 3)} | {_fmt(r['by_kernel_name_ms_per_step'], 3)} "
                f"| {_fmt(r['total_ms_per_step'], 3)} | {r['source']} |"
            )
    return lines


def _layers_section(report: dict) -> list[str]:
    rows = [(n, k, s) for n in report["variant_order"] for k, s in report["variants"][n]["layers"].items()]
    if not rows:
        return []
    return [
        "",
        "## Attention and dense layers (forward ranges, eager runs only; nested kinds overlap)",
        "",
        "| variant | layer kind | calls / step | host ms / step | device ms / step |",
        "|---|---|---|---|---|",
    ] + [
        f"| {n} | {k} | {_fmt(s['calls_per_step'], 1)} | {_fmt(s['host_ms_per_step'])} "
        f"| {_fmt(s['device_ms_per_step'])} |"
        for n, k, s in rows
    ]


def _top_kernels_section(report: dict) -> list[str]:
    _, unit = _device_unit(report)
    lines = []
    for n in report["variant_order"]:
        m = report["variants"][n]
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
    return lines


def _hta_section(report: dict) -> list[str]:
    hta = report["hta"]
    lines = [
        "",
        "## HolisticTraceAnalysis",
        "",
        f"Installed: {'yes' if hta['installed'] else 'no'}. "
        f"Computed here: {', '.join(hta['computed']) or 'nothing'}. {hta['note']}",
    ]
    for n in report["variant_order"]:
        h = report["variants"][n]["hta"]
        if not h.get("used"):
            lines.append(f"- {n}: not used ({h.get('reason')}).")
            continue
        lines.append(f"- {n}: " + _hta_summary(h))
        lines += [f"  - {key} failed: {err}" for key, err in h.get("errors", {}).items()]
    return lines


def _closing_sections(report: dict) -> list[str]:
    warnings = [(n, w) for n in report["variant_order"] for w in report["variants"][n]["warnings"]]
    lines = ["", "## Warnings", ""] + [f"- {n}: {w}" for n, w in warnings] if warnings else []
    if report["charts"]:
        lines += ["", "## Charts", ""] + [f"![{Path(c).stem}]({c})" for c in report["charts"]]
    return lines


MARKDOWN_SECTIONS = (
    _summary_section,
    _category_section,
    _regions_section,
    _layers_section,
    _top_kernels_section,
    _hta_section,
    _closing_sections,
)


def render_markdown(report: dict) -> str:
    """The report as Markdown tables (every figure also in report.json), section by section."""
    return "\n".join(line for section in MARKDOWN_SECTIONS for line in section(report)) + "\n"


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


def _step_time_bars(ax: Any, report: dict) -> None:
    names, v = report["variant_order"], report["variants"]
    x = range(len(names))
    trace_ms = [v[n]["median_step_ms"] for n in names]
    wall_ms = [v[n]["run"].get("wall_median_step_ms") or 0.0 for n in names]
    ax.bar([i - 0.2 for i in x], trace_ms, width=0.4, label="profiled (trace)")
    ax.bar([i + 0.2 for i in x], wall_ms, width=0.4, label="wall clock")
    for i, n in enumerate(names):
        s = v[n]["speedup_vs_baseline"]
        ax.annotate(f"{s:.2f}×" if s else "", (i - 0.2, trace_ms[i]), ha="center", va="bottom", fontsize=8)


def _temporal_bars(ax: Any, report: dict) -> None:
    names, v = report["variant_order"], report["variants"]
    busy = [v[n]["temporal"]["busy_ms_per_step"] for n in names]
    idle = [v[n]["temporal"]["idle_ms_per_step"] for n in names]
    ax.bar(range(len(names)), busy, label="busy")
    ax.bar(range(len(names)), idle, bottom=busy, label="idle")


def _category_bars(ax: Any, report: dict) -> None:
    names, v = report["variant_order"], report["variants"]
    bottom = [0.0] * len(names)
    for cat in report["categories"]:
        values = [v[n]["category_ms"][cat] / v[n]["steps"] for n in names]
        ax.bar(range(len(names)), values, bottom=bottom, label=cat)
        bottom = [b + val for b, val in zip(bottom, values)]


def _region_bars(ax: Any, report: dict) -> None:
    names, v = report["variant_order"], report["variants"]
    width = 0.8 / max(len(REGIONS), 1)
    for j, region in enumerate(REGIONS):
        values = [v[n]["regions"][region]["total_ms_per_step"] or 0.0 for n in names]
        ax.bar([i - 0.4 + width * (j + 0.5) for i in range(len(names))], values, width=width, label=region)


# file name -> (draw the bars, y label, title, figure size, legend font size)
CHARTS = {
    "step_time.png": (_step_time_bars, "median step (ms)", "Step time", (6, 3.5), None),
    "temporal.png": (_temporal_bars, "ms per step", "Device busy vs idle", (6, 3.5), None),
    "categories.png": (_category_bars, "ms per step", "Device time by category", (7, 4), 7),
    "regions.png": (_region_bars, "ms per step (forward + backward)", "SK select and Z-pool", (6, 3.5), None),
}


def write_charts(report: dict, root: Path) -> list[str]:
    """Bar charts (matplotlib Agg), one per :data:`CHARTS` entry; returns the file names written into ``root``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = report["variant_order"]
    for filename, (draw, ylabel, title, size, legend_fontsize) in CHARTS.items():
        fig, ax = plt.subplots(figsize=size)
        tmp = root / f".{filename}.tmp.png"
        try:
            draw(ax, report)
            ax.set_xticks(list(range(len(names))), names)
            ax.set_ylabel(ylabel)
            ax.set_title(title)
            ax.legend(fontsize=legend_fontsize)
            fig.tight_layout()
            fig.savefig(tmp, dpi=110)
            os.replace(tmp, root / filename)  # a chart appears whole or not at all
        finally:
            plt.close(fig)
            tmp.unlink(missing_ok=True)
    return list(CHARTS)
