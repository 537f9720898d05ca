"""Study cost from step times (fastcifar.study.cost): measured where a GPU run recorded them, else
the computed floor at the stated efficiency, and ``study run --plan`` prints it without running."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fastcifar.study.cost import ASSUMED_EFFICIENCY, measured_step_times, plan_table, run_hours, step_time
from fastcifar.study.rows import ROWS


def floors(train_ms: float, launch_ms: float, eval_ms: float, eval_launch_ms: float, per_op: float = 3.0) -> dict:
    """A roofline record's figures: the per-op floors are ``per_op`` times the fused ones."""
    figures = {
        "floor_ms_per_step": train_ms,
        "per_op_ms_per_step": per_op * train_ms,
        "launch_ms_per_step": launch_ms,
        "eval": {
            "floor_ms_per_batch": eval_ms,
            "per_op_ms_per_batch": per_op * eval_ms,
            "launch_ms_per_batch": eval_launch_ms,
        },
    }
    return {"bf16": figures, "fp32": figures}


def train_record(gpu: str | None, step_ms: float, batch_size: int = 256, model_kwargs: dict | None = None) -> dict:
    return {
        "benchmark": "train",
        "environment": {"gpu": gpu},
        "config": {"arch": "sk_densenet", "batch_size": batch_size, "model_kwargs": model_kwargs or {}},
        "variants": {"compiled_bf16_cl_triton": {"step_ms": step_ms}, "eager_fp32": {"step_ms": 4 * step_ms}},
    }


def test_measured_step_times_come_from_full_size_gpu_records_only(tmp_path: Path) -> None:
    (tmp_path / "train-cuda-2027-01-01.json").write_text(json.dumps(train_record("NVIDIA H200", 12.0)))
    (tmp_path / "train-cpu-2027-01-02.json").write_text(json.dumps(train_record(None, 900.0)))
    (tmp_path / "train-cuda-2027-01-03.json").write_text(json.dumps(train_record("NVIDIA H200", 1.0, 8, {"k": 1})))
    (tmp_path / "broken.json").write_text("{")
    suite = {"config": {"tiny": False}, "sections": {
        "environment": {"result": {"environment": {"gpu": "NVIDIA H200"}}},
        "train:compiled_bf16_cl": {"status": "ok", "result": {"step_ms": 15.0, "batch_size": 256}},
    }}  # fmt: skip
    (tmp_path / "suite-cuda-2027-01-04.json").write_text(json.dumps(suite))
    found = measured_step_times(tmp_path)
    assert found == {
        ("sk_densenet", "compiled_bf16_cl_triton"): (0.012, "train-cuda-2027-01-01.json"),
        ("sk_densenet", "eager_fp32"): (0.048, "train-cuda-2027-01-01.json"),
        ("sk_densenet", "compiled_bf16_cl"): (0.015, "suite-cuda-2027-01-04.json"),
    }
    assert measured_step_times(tmp_path, gpu="A100") == {}


def test_a_measured_row_uses_its_step_time_and_the_others_the_floor() -> None:
    measured = {("sk_densenet", "compiled_bf16_cl_triton"): (0.012, "train-cuda.json")}
    table = {"dense_sk_k5": floors(4.0, 10.0, 2.0, 3.0), "dense_sk_k2": floors(3.0, 9.0, 1.5, 3.0)}
    hit = step_time(ROWS["dense_sk_k5"], fast=True, measured=measured, floors=table)
    assert hit.step_s == 0.012 and hit.eval_s == pytest.approx(0.012 * 2.0 / 4.0)
    assert hit.source == "measured (compiled_bf16_cl_triton, train-cuda.json)"
    # k=2 is not the measured configuration: floor / efficiency.
    other = step_time(ROWS["dense_sk_k2"], fast=True, measured=measured, floors=table)
    assert other.step_s == pytest.approx(0.003 / ASSUMED_EFFICIENCY)
    assert other.source == f"fused floor / {ASSUMED_EFFICIENCY:.2f}"
    assert run_hours(other, 30) == pytest.approx(30 * (195 * other.step_s + 20 * other.eval_s) / 3600)


def test_an_eager_run_is_held_to_its_unfused_per_op_floor_or_its_launches() -> None:
    table = {"van": floors(0.3, 2.6, 0.2, 1.0), "densenet": floors(2.5, 4.0, 1.0, 1.5)}
    launch_bound = step_time(ROWS["van"], fast=False, measured={}, floors=table)
    assert launch_bound.step_s == pytest.approx(0.0026 / ASSUMED_EFFICIENCY)
    assert launch_bound.eval_s == pytest.approx(0.001 / ASSUMED_EFFICIENCY)
    assert launch_bound.source.startswith("eager floor (launches)")
    per_op_bound = step_time(ROWS["densenet"], fast=False, measured={}, floors=table)
    assert per_op_bound.step_s == pytest.approx(3 * 0.0025 / ASSUMED_EFFICIENCY)
    assert per_op_bound.source.startswith("eager floor (per-op)")
    # A compiled (--fast) run is held to the ideal-fusion floor.
    assert step_time(ROWS["van"], fast=True, measured={}, floors=table).step_s == pytest.approx(0.0009)


def test_plan_table_sums_the_rows(tmp_path: Path) -> None:
    record = {"models": {"van": floors(0.3, 2.6, 0.2, 1.0), "res2net": floors(0.4, 1.0, 0.2, 0.5)}}
    (tmp_path / "roofline-2027-01-01.json").write_text(json.dumps(record))
    text = plan_table([ROWS["van"], ROWS["res2net"]], seeds=3, folder=tmp_path)
    van = run_hours(step_time(ROWS["van"], fast=False, measured={}, floors=record["models"]), 30)
    res2net = run_hours(step_time(ROWS["res2net"], fast=False, measured={}, floors=record["models"]), 30)
    assert f"**{3 * (van + res2net):.2f}**" in text
    assert "| `van` | van |" in text and "eager floor (launches)" in text


def test_study_run_plan_prints_the_cost_and_runs_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from fastcifar.study.__main__ import main

    out = tmp_path / "never"
    main(["run", "--rows", "van,res2net", "--seeds", "2", "--plan", "--fast", "--out", str(out)])
    text = capsys.readouterr().out
    assert "| `van` | van |" in text and "| `res2net` | res2net |" in text and "--fast" in text
    assert not out.exists()
