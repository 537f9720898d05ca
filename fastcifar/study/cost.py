"""What a study costs in device hours, from step times: ``python -m fastcifar.study run ... --plan``.

Per row::

    hours = seeds x epochs x (steps x t_step + eval_batches x t_eval) / 3600

with 195 steps of 256 (CIFAR-100's 50,000 images, last partial batch dropped) and the 10,000 test
images in batches of 512 per epoch. ``t_step`` and ``t_eval`` come, in this order of preference,
from

1. **measured**: a GPU run's step time for the row's model and variant, read from the benchmark
   records in ``bench/results/`` (``bench.train`` and ``bench.suite`` results whose GPU is the
   one asked for, H200 by default). The evaluation batch is scaled from the measured step by the
   floor's eval/train ratio;
2. **floor**: the computed roofline floor of the row's step (:mod:`fastcifar.profiling.roofline`,
   from ``bench/results/roofline-*.json`` or traced on the spot) divided by a stated efficiency
   (:data:`ASSUMED_EFFICIENCY`: a step at 3x its floor, the project's goal for the fast
   variant). A ``--fast`` run's floor is the ideal-fusion one; an eager run's (no ``--fast``) is
   the larger of its unfused per-op floor and its kernel launches x 3 us (:func:`floor_seconds`).

Each row says which one it used. FLOP-proportional scaling is not used: these models are memory-
and launch-bound (the roofline's tables), so FLOPs do not predict their step times.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastcifar.study.rows import Row, is_default

ASSUMED_EFFICIENCY = 1 / 3  # fraction of the floor's speed a step reaches without a measurement
TRAIN_IMAGES, TEST_IMAGES = 50_000, 10_000
BATCH, EVAL_BATCH = 256, 512
SUITE_ARCH = "sk_densenet"  # bench.suite times this model only
FAST_VARIANT, BASELINE_VARIANT = "compiled_bf16_cl_triton", "eager_fp32"


def results_dir() -> Path:
    """``bench/results`` of the checkout this package runs from, else of the working directory."""
    checkout = Path(__file__).resolve().parents[2] / "bench" / "results"
    return checkout if checkout.is_dir() else Path("bench") / "results"


@dataclass(frozen=True)
class StepTime:
    """Seconds of one training step and one evaluation batch for a row, and where they come from."""

    step_s: float
    eval_s: float
    source: str


def _gpu_of(record: dict[str, Any]) -> str:
    """The GPU a benchmark record was measured on ('' when none): bench.common's header or the suite's."""
    env = record.get("environment") or {}
    if not env.get("gpu"):
        env = ((record.get("sections") or {}).get("environment") or {}).get("result", {}).get("environment") or {}
    return str(env.get("gpu") or "")


def measured_step_times(folder: Path, gpu: str = "H200") -> dict[tuple[str, str], tuple[float, str]]:
    """(model, variant) -> (step seconds at batch 256, file) from the GPU records in ``folder``.

    Only full-size runs at the study's batch count; of several, the newest file wins.
    """
    found: dict[tuple[str, str], tuple[float, str]] = {}
    for path in sorted(folder.glob("*.json")):  # names end in the date: later files replace earlier
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict) or gpu.lower() not in _gpu_of(record).lower():
            continue
        config = record.get("config") or {}
        if record.get("benchmark") == "train":
            if config.get("model_kwargs") or config.get("batch_size") != BATCH:
                continue
            for name, row in (record.get("variants") or {}).items():
                if row.get("step_ms"):
                    found[(config.get("arch", SUITE_ARCH), name)] = (row["step_ms"] / 1000, path.name)
        elif "sections" in record and not config.get("tiny", True):
            for section, entry in record["sections"].items():
                result = entry.get("result") or {}
                if section.startswith("train:") and result.get("step_ms") and result.get("batch_size") == BATCH:
                    found[(SUITE_ARCH, section.split(":", 1)[1])] = (result["step_ms"] / 1000, path.name)
    return found


def floor_figures(rows: Iterable[Row], folder: Path) -> dict[str, dict[str, Any]]:
    """Row id -> the roofline record of ``bench.roofline`` (``bf16`` / ``fp32``), newest file first,
    tracing on the meta device the rows no file covers."""
    figures: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("roofline-*.json"), reverse=True):
        try:
            models = json.loads(path.read_text(encoding="utf-8"))["models"]
        except (OSError, ValueError, KeyError):
            continue
        for row_id, entry in models.items():
            if "per_op_ms_per_batch" in entry.get("fp32", {}).get("eval", {}):
                figures.setdefault(row_id, dict(entry, file=path.name))
    missing = [row for row in rows if row.id not in figures]
    if missing:
        from tqdm import tqdm

        from fastcifar.profiling.roofline import roofline

        for row in tqdm(missing, desc="tracing floors on meta", unit="row", leave=False):
            figures[row.id] = {
                precision: roofline(row.model, amp=amp, overrides=row.overrides).as_json()
                for precision, amp in (("bf16", True), ("fp32", False))
            } | {"file": None}
    return figures


def floor_seconds(figures: dict[str, Any], fast: bool) -> tuple[float, float, str]:
    """(train step, eval batch) floor seconds of a roofline record, and which floor it is.

    A ``--fast`` (compiled) step is held to the ideal-fusion floor, max(compute, fused memory); an
    eager step runs every aten op as its own kernel, so it is held to the larger of the unfused
    per-op floor and its kernel launches.
    """
    ev = figures["eval"]
    if fast:
        return figures["floor_ms_per_step"] / 1000, ev["floor_ms_per_batch"] / 1000, "fused floor"
    per_op, launches = figures["per_op_ms_per_step"], figures["launch_ms_per_step"]
    step = max(per_op, launches) / 1000
    evaluation = max(ev["per_op_ms_per_batch"], ev["launch_ms_per_batch"]) / 1000
    return step, evaluation, "eager floor (" + ("per-op" if per_op >= launches else "launches") + ")"


def step_time(
    row: Row,
    *,
    fast: bool,
    measured: dict[tuple[str, str], tuple[float, str]],
    floors: dict[str, dict[str, Any]],
    efficiency: float = ASSUMED_EFFICIENCY,
) -> StepTime:
    """A row's step and evaluation seconds: measured where recorded, else floor / efficiency."""
    train_floor_s, eval_floor_s, kind = floor_seconds(floors[row.id]["bf16" if fast else "fp32"], fast)
    variant = FAST_VARIANT if fast else BASELINE_VARIANT
    hit = measured.get((row.model, variant)) if is_default(row) else None
    if hit is not None:
        step_s, name = hit
        return StepTime(step_s, step_s * eval_floor_s / train_floor_s, f"measured ({variant}, {name})")
    return StepTime(train_floor_s / efficiency, eval_floor_s / efficiency, f"{kind} / {efficiency:.2f}")


def run_hours(time: StepTime, epochs: int) -> float:
    """Device hours of one run of ``epochs`` epochs at ``time``."""
    steps = TRAIN_IMAGES // BATCH
    return epochs * (steps * time.step_s + math.ceil(TEST_IMAGES / EVAL_BATCH) * time.eval_s) / 3600


def plan_table(
    rows: list[Row], *, seeds: int, epochs: int = 30, fast: bool = False, folder: Path | None = None, gpu: str = "H200"
) -> str:
    """The plan's cost, one line per row and a total, in Markdown (what ``--plan`` prints)."""
    folder = folder or results_dir()
    measured = measured_step_times(folder, gpu)
    floors = floor_figures(rows, folder)
    lines = [
        f"Cost on one {gpu}, {'--fast' if fast else 'eager fp32 (no --fast)'}, {epochs} epochs, "
        f"{seeds} seed(s) per row:",
        "",
        "| row | model | step ms | eval batch ms | from | hours per seed | hours |",
        "|---|---|---:|---:|---|---:|---:|",
    ]
    total = 0.0
    for row in rows:
        time = step_time(row, fast=fast, measured=measured, floors=floors)
        hours = run_hours(time, epochs)
        total += seeds * hours
        lines.append(
            f"| `{row.id}` | {row.model} | {1000 * time.step_s:.2f} | {1000 * time.eval_s:.2f} | {time.source} "
            f"| {hours:.3f} | {seeds * hours:.2f} |"
        )
    lines += [
        f"| **total** | | | | | | **{total:.2f}** |",
        "",
        "Measured step times come from GPU benchmark records in bench/results; the others are the computed "
        f"roofline floor at {ASSUMED_EFFICIENCY:.2f} efficiency (a step at 3x its floor): for --fast the "
        "ideal-fusion floor, for eager runs the larger of the unfused per-op floor and kernel launches x 3 us. "
        "Computed figures are estimates, not measurements.",
    ]
    return "\n".join(lines)
