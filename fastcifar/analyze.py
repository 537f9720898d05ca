"""``python -m fastcifar.analyze DIR``: side-by-side report of the variants profiled into DIR.

Writes ``report.md``, ``report.json`` and PNG charts (step time, busy vs idle, time by category,
SK select / Z-pool) into DIR, or into ``--out`` (e.g. when DIR is read-only). GPU traces are
analysed from their kernels (with HolisticTraceAnalysis for the breakdowns it offers, when
installed); CPU traces from their operators, so the same report comes out of a CPU-only run. See
docs/profiling.md.

Example::

    python -m fastcifar.profile --out runs/profile && python -m fastcifar.analyze runs/profile
    python -m fastcifar.analyze /readonly/profile --out runs/report --top_n 20 --nocharts

The command line goes through :mod:`fastcifar.cli`, which runs it without fire where fire is absent
(the GPU machine); a mistyped flag fails before any trace is read.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastcifar.errors import UserError
from fastcifar.profiling.comparison import analyze

PROG = "fastcifar.analyze"


def main(dir: str, out: str | None = None, top_n: int = 10, charts: bool = True) -> None:
    """Side-by-side report of a fastcifar.profile folder: one line per variant, and where the report went.

    Args:
        dir: the --out folder of python -m fastcifar.profile.
        out: folder for report.md/report.json/charts (default: DIR).
        top_n: kernels (ops) listed per variant (>= 1).
        charts: write PNG charts (--nocharts: none).
    """
    if top_n < 1:
        raise UserError(f"--top_n must be a whole number >= 1, got {top_n!r} (see --help).")
    report = analyze(dir, top_n=top_n, charts=charts, out=out)
    base = report["baseline"]
    for name in report["variant_order"]:
        m = report["variants"][name]
        speedup = m["speedup_vs_baseline"]
        wall = m["wall_speedup_vs_baseline"]
        busy = m["temporal"]["busy_pct"]
        print(
            f"{name:16s} median step {m['median_step_ms']:.2f} ms (trace)"
            + (f", {speedup:.2f}x vs {base}" if speedup else "")
            + (f", wall {wall:.2f}x" if wall else "")
            + (f"; busy {busy:.0f}%" if busy is not None else "")
        )
    target = Path(out) if out else Path(dir)
    print(f"report: {target / 'report.md'}  (json: report.json; charts: {', '.join(report['charts']) or 'none'})")


__all__ = ["analyze", "main"]

if __name__ == "__main__":
    from fastcifar.cli import run_cli

    os.environ.setdefault("MPLBACKEND", "Agg")
    run_cli(main, PROG)
