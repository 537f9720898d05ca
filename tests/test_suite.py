"""The GPU suite runs end-to-end on CPU at tiny sizes, so it cannot rot between GPU runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_suite_runs_every_section_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "suite"
    # The cuda_tests section re-collects the whole test suite; it is exercised on GPU runs only.
    cmd = [sys.executable, "-m", "bench.suite", "--out", str(out), "--device", "cpu", "--tiny",
           "--skip", "cuda_tests", "--train_variants", "eager_fp32,eager_bf16",
           "--profile_variants", "eager,compiled", "--compile_backend", "aot_eager"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    record = json.loads((out / "results.json").read_text())
    sections = record["sections"]
    assert list(sections) == ["environment", "kernels", "augment", "gpu_loader", "train", "profile"]
    assert all(entry["status"] == "ok" for entry in sections.values()), sections

    env = sections["environment"]["result"]
    assert env["environment"]["device_type"] == "cpu"
    assert env["copy"]["gb_per_s"] > 0 and env["matmul"]["tflop_per_s"] > 0

    loader = sections["gpu_loader"]["result"]
    assert loader["epochs"][-1]["images"] == (loader["images"] // 256) * 256  # drop_last epoch

    train = sections["train"]["result"]["variants"]
    assert set(train) == {"eager_fp32", "eager_bf16"}
    assert all(v["images_per_s"] > 0 for v in train.values())

    profile = sections["profile"]["result"]
    steps = profile["median_step_ms"]
    assert profile["speedup"]["eager"] == pytest.approx(1.0)
    assert profile["speedup"]["compiled"] == pytest.approx(steps["eager"] / steps["compiled"], rel=1e-6)
    assert (out / "profile" / "report.md").is_file()

    summary = (out / "results.md").read_text()
    for name in sections:
        assert f"| {name} | ok |" in summary
    assert summary.strip() in proc.stdout  # the short table is printed last


def test_derived_goal_figures_follow_from_the_sections() -> None:
    from bench.suite import FAST_VARIANT, derive, render_markdown

    sections = {
        "augment": {"status": "ok", "result": {"throughput": {"results": [
            {"pipeline": "torchvision-pil", "images_per_s": 900.0},
            {"pipeline": "fastcifar", "images_per_s": 200_000.0},
        ]}}},
        "train": {"status": "ok", "result": {"variants": {
            "eager_fp32": {"images_per_s": 4_000.0},
            FAST_VARIANT: {"images_per_s": 16_000.0},
        }}},
    }
    derived = derive(sections)
    # One image costs 1/200k s to augment and 1/16k s to train: the share is 16k/200k.
    assert derived["augment_share_of_fast_step"] == pytest.approx(0.08)
    assert derived["fast_vs_eager_fp32"] == pytest.approx(4.0)
    assert derived["projected_30_epochs_seconds"] == pytest.approx(30 * 50_000 / 16_000)

    failed = dict(sections, train={"status": "failed", "error": "boom"})
    assert derive(failed)["fast_vs_eager_fp32"] is None
    assert derive(failed)["augment_share_of_fast_step"] is None

    record = {"date": "d", "command": "c", "sections": {
        name: dict(entry, seconds=1.0) for name, entry in sections.items()}, "derived": derived}
    text = render_markdown(record)
    assert "8.0%" in text and "4.00x" in text and "94 s" in text
