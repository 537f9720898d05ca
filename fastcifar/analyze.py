"""``python -m fastcifar.analyze DIR``: side-by-side report of the variants profiled into DIR.

Writes ``DIR/report.md``, ``DIR/report.json`` and PNG charts (step time, busy vs idle, time by
category, SK select / Z-pool). GPU traces are analysed from their kernels (with
HolisticTraceAnalysis for the breakdowns it offers, when installed); CPU traces from their
operators, so the same report comes out of a CPU-only run. See docs/profiling.md.

Example::

    python -m fastcifar.profile --out runs/profile && python -m fastcifar.analyze runs/profile
"""

from __future__ import annotations

import os
from pathlib import Path

from fastcifar.analysis.report import analyze

PROG = "fastcifar.analyze"


def main(dir: str, top_n: int = 10, charts: bool = True) -> None:  # noqa: A002 - positional CLI name
    """Analyse the profile folder ``dir`` and print where the report went."""
    report = analyze(dir, top_n=top_n, charts=charts)
    base = report["baseline"]
    for name in report["variant_order"]:
        m = report["variants"][name]
        speedup = m["speedup_vs_baseline"]
        wall = m["wall_speedup_vs_baseline"]
        print(
            f"{name:16s} median step {m['median_step_ms']:.2f} ms (trace)"
            + (f", {speedup:.2f}x vs {base}" if speedup else "")
            + (f", wall {wall:.2f}x" if wall else "")
            + f"; busy {m['temporal']['busy_pct']:.0f}%"
        )
    print(f"report: {Path(dir) / 'report.md'}  (json: report.json; charts: {', '.join(report['charts']) or 'none'})")


__all__ = ["analyze", "main"]

if __name__ == "__main__":
    from fastcifar.cli import run_cli

    os.environ.setdefault("MPLBACKEND", "Agg")
    run_cli(main, PROG)
