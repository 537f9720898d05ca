"""The roofline floor of every study model's training step, computed on the meta device (no GPU).

For each row of the study (``fastcifar.study.rows.ROWS``) at batch 256, in bf16 (autocast +
channels_last, the fast variant) and fp32 (the study's eager baseline): FLOPs, bytes every aten
op reads and writes (unfused), the ideal-fusion lower bound, eager kernel launches per step, and
the floors (compute, memory, per-op, launches) per step and for the study's 30 epochs with
evaluation. The rules and definitions are :mod:`fastcifar.profiling.roofline`'s. Every figure is
computed from shapes and the peaks given, none is measured: the peaks default to the H200's
datasheet; ``--suite results.json`` takes the copy bandwidth and matmul rate a GPU run of
``bench.suite`` measured instead.

Usage::

    python -m bench.roofline                        # every study row -> bench/results/roofline-<date>.{json,md}
    python -m bench.roofline --rows dense_sk_k5,van --out /tmp
    python -m bench.roofline --suite bench/results/suite/results.json
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, environment_line, markdown_table, new_record, save_record
from fastcifar.errors import UserError
from fastcifar.profiling.roofline import (
    EPOCHS,
    TRAIN_BATCH,
    Peaks,
    Roofline,
    categories_table,
    roofline,
)

BREAKDOWN_ROW = "dense_sk_k5"  # sk_densenet as the study defines it: the category table's model
PRECISIONS = {"bf16": True, "fp32": False}


def peaks_from_suite(path: str, launch_us: float) -> Peaks:
    """The copy bandwidth and matmul rate a GPU run of ``bench.suite`` measured (its results.json)."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
        env = record["sections"]["environment"]["result"]
        if env["environment"]["device_type"] != "cuda":
            raise UserError(f"--suite {path!r} was measured on {env['environment']['device_type']}, not a GPU.")
        return Peaks.measured(float(env["matmul"]["tflop_per_s"]), float(env["copy"]["gb_per_s"]), launch_us)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(
            f"--suite {path!r} is not a bench.suite results.json with an environment section ({err})."
        ) from None


def study_rooflines(rows: list[Any], batch_size: int, peaks: Peaks) -> dict[str, dict[str, Roofline]]:
    """Row id -> precision -> :class:`Roofline`, with a progress bar."""
    from tqdm import tqdm

    jobs = [(row, precision) for row in rows for precision in PRECISIONS]
    out: dict[str, dict[str, Roofline]] = {}
    for row, precision in tqdm(jobs, desc="tracing on meta", unit="step", leave=False):
        out.setdefault(row.id, {})[precision] = roofline(
            row.model, amp=PRECISIONS[precision], batch_size=batch_size, peaks=peaks, overrides=row.overrides
        )
    return out


def _summary_table(results: dict[str, dict[str, Roofline]], rows: list[Any], precision: str) -> str:
    body = []
    for row in rows:
        r = results[row.id][precision].as_json()
        label = row.model + "".join(f" {k}={v}" for k, v in row.overrides.items())
        body.append(
            [
                f"`{row.id}`",
                label,
                f"{r['train_tflop_per_step']:.3f}",
                f"{r['bytes_per_step_unfused'] / 1e9:.1f}",
                f"{r['bytes_per_step_fused_bound'] / 1e9:.1f}",
                f"{r['eager_kernels_per_step']:,}",
                f"{r['compute_ms_per_step']:.2f}",
                f"{r['memory_unfused_ms_per_step']:.2f}",
                f"{r['memory_fused_ms_per_step']:.2f}",
                f"{r['per_op_ms_per_step']:.2f}",
                f"{r['launch_ms_per_step']:.2f}",
                f"**{r['floor_ms_per_step']:.2f}**",
                r["bound_by"],
                f"{r['floor_seconds_30_epochs']:.1f}",
                f"{r['eager_launch_seconds_30_epochs']:.1f}",
            ]
        )
    header = [
        "row",
        "model",
        "TFLOP/step",
        "GB unfused",
        "GB fused bound",
        "eager kernels",
        "compute ms",
        "memory ms unfused",
        "memory ms fused",
        "per-op ms",
        "launch ms",
        "floor ms",
        "bound by",
        "floor s, 30 epochs",
        "eager launches s, 30 epochs",
    ]
    return markdown_table(header, "ll" + "r" * 10 + "lrr", body)


def render_markdown(record: dict[str, Any], results: dict[str, dict[str, Roofline]], rows: list[Any]) -> str:
    peaks = record["peaks"]
    lines = [
        f"# Roofline floor of every study model's training step ({record['date'][:10]})",
        "",
        f"Command: `{record['command']}` ({record['seconds']:.0f} s). {environment_line(record['environment'])}",
        "",
        "**Computed, not measured**: every figure follows from the aten ops of one step traced on the meta "
        f"device and the peaks: {peaks['source']}. fp32 steps are held to the TF32 tensor-core rate "
        f"({peaks['fp32_tflop_per_s']:.0f} TFLOP/s: cuDNN runs fp32 convolutions in TF32 by default).",
        "",
        f"Batch {record['batch_size']} (train) and {record['eval_batch_size']} (evaluation); a step is forward + "
        "cross-entropy + backward + the fused Adam step. **floor** = max(compute, memory under ideal fusion); "
        f"the 30-epoch floor adds {EPOCHS} x (195 steps + the 10,000 test images). Kernel counts are eager mode's.",
        "",
        "Ideal fusion (`fastcifar/profiling/roofline.py`): convolutions, matrix products and the optimizer step "
        "read their inputs once and write their outputs once; BN's normalise, activations, casts, element-wise "
        "ops and gradient sums are fused into them (an anchor reads what a fused result is computed from); "
        "concatenation is free (consumers read the pieces); reductions (BN statistics and BN-backward sums, "
        "pooling) run in the epilogue of their producer and write only their small results.",
        "",
    ]
    for precision, title in (
        ("bf16", "bf16 autocast + channels_last (the fast variant)"),
        ("fp32", "fp32 NCHW (the study's baseline)"),
    ):
        lines += [f"## {title}", "", _summary_table(results, rows, precision), ""]
    breakdown = results.get(BREAKDOWN_ROW)
    if breakdown:
        lines += [
            f"## Where a `sk_densenet` step's bytes go (row `{BREAKDOWN_ROW}`, unfused, per op category)",
            "",
            "Memory ms is the category's unfused bytes over the bandwidth; FLOPs only in convolutions and "
            "matrix products.",
            "",
        ]
        for precision in PRECISIONS:
            r = breakdown[precision]
            header = ["category", "ops", "eager kernels", "GB", "share of bytes", "TFLOP", "memory ms"]
            lines += [
                f"### {precision}",
                "",
                markdown_table(header, "lrrrrrr", categories_table(r.train.categories.items(), r.peaks.tb_per_s)),
                "",
            ]
    return "\n".join(lines)


def main(
    rows: str | tuple | list | None = None,
    batch_size: int = TRAIN_BATCH,
    peak_tflop_per_s: float = Peaks.tflop_per_s,
    bandwidth_tb_per_s: float = Peaks.tb_per_s,
    launch_us: float = Peaks.launch_us,
    suite: str | None = None,
    out: str = str(RESULTS_DIR),
) -> None:
    """Trace every study row on meta, print the floors, write ``<out>/roofline-<date>.{json,md}``.

    Args:
        rows: comma-separated row ids of ``python -m fastcifar.study list`` (default: every row).
        batch_size: training batch (the study's 256); evaluation uses the study's 512.
        peak_tflop_per_s: dense bf16 tensor-core peak (default the H200's); fp32 gets the TF32 half.
        bandwidth_tb_per_s: memory bandwidth (default the H200's HBM3e).
        launch_us: cost of one kernel launch in eager mode.
        suite: a GPU run's ``bench.suite`` results.json: use its measured matmul rate and copy bandwidth.
        out: folder for the result files.
    """
    from fastcifar.study.rows import ROWS, select_rows

    for name, value in (("peak_tflop_per_s", peak_tflop_per_s), ("bandwidth_tb_per_s", bandwidth_tb_per_s)):
        if not value > 0:
            raise UserError(f"--{name} must be positive, got {value}.")
    if not (isinstance(batch_size, int) and batch_size > 1):
        raise UserError(f"--batch_size must be an integer above 1, got {batch_size!r}.")
    selected = list(ROWS.values()) if rows is None else select_rows("all", rows)
    if suite is not None:
        peaks = peaks_from_suite(suite, launch_us)
    elif (peak_tflop_per_s, bandwidth_tb_per_s, launch_us) == (Peaks.tflop_per_s, Peaks.tb_per_s, Peaks.launch_us):
        peaks = Peaks()
    else:
        peaks = Peaks(
            peak_tflop_per_s,
            bandwidth_tb_per_s,
            launch_us,
            f"given: {peak_tflop_per_s:g} TFLOP/s bf16, {bandwidth_tb_per_s:g} TB/s, {launch_us:g} us per launch",
        )
    start = time.monotonic()
    results = study_rooflines(selected, batch_size, peaks)
    seconds = time.monotonic() - start
    any_result = next(iter(next(iter(results.values())).values()))
    record = {
        **new_record("roofline"),
        "seconds": seconds,
        "note": "Computed from meta-device traces and the peaks below; no figure here is measured on a GPU.",
        "batch_size": batch_size,
        "eval_batch_size": any_result.eval.batch_size,
        "peaks": {
            "bf16_tflop_per_s": peaks.tflop_per_s,
            "fp32_tflop_per_s": peaks.for_precision(False),
            "tb_per_s": peaks.tb_per_s,
            "launch_us": peaks.launch_us,
            "source": peaks.source,
        },
        "models": {
            row.id: {
                "model": row.model,
                "overrides": row.overrides,
                **{precision: results[row.id][precision].as_json() for precision in PRECISIONS},
            }
            for row in selected
        },
    }
    markdown = render_markdown(record, results, selected)
    print(markdown)
    save_record(out, record, markdown + "\n")


if __name__ == "__main__":
    from fastcifar.cli import run_cli

    run_cli(main, "bench.roofline")
