"""``python -m fastcifar.analyze DIR``: side-by-side report of the variants profiled into DIR.

Writes ``report.md``, ``report.json`` and PNG charts (step time, busy vs idle, time by category,
SK select / Z-pool) into DIR, or into ``--out`` (e.g. when DIR is read-only). GPU traces are
analysed from their kernels (with HolisticTraceAnalysis for the breakdowns it offers, when
installed); CPU traces from their operators, so the same report comes out of a CPU-only run. See
docs/profiling.md.

Example::

    python -m fastcifar.profile --out runs/profile && python -m fastcifar.analyze runs/profile
    python -m fastcifar.analyze /readonly/profile --out runs/report --top_n 20 --nocharts

The command line is argparse, not fire, so it runs where fire is absent (the GPU machine) and a
mistyped flag fails before any trace is read.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from fastcifar.errors import UserError
from fastcifar.profiling.comparison import analyze

PROG = "fastcifar.analyze"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and exit 2, like every other user mistake
        raise UserError(f"{message} (see --help)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _Parser(
        prog=f"python -m {PROG}", description="Side-by-side report of a fastcifar.profile folder.", allow_abbrev=False
    )
    parser.add_argument("dir", help="the --out folder of python -m fastcifar.profile")
    parser.add_argument("--out", default=None, help="folder for report.md/report.json/charts (default: DIR)")
    parser.add_argument("--top_n", type=_positive_int, default=10, help="kernels (ops) listed per variant")
    parser.add_argument("--charts", dest="charts", action="store_true", default=True, help="write PNG charts (default)")
    parser.add_argument("--nocharts", dest="charts", action="store_false", help="no PNG charts")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Analyse the profile folder and print one line per variant and where the report went."""
    args = parse_args(argv)
    report = analyze(args.dir, top_n=args.top_n, charts=args.charts, out=args.out)
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
    target = Path(args.out) if args.out else Path(args.dir)
    print(f"report: {target / 'report.md'}  (json: report.json; charts: {', '.join(report['charts']) or 'none'})")


__all__ = ["analyze", "main"]

if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        main()
    except UserError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
