"""Smoke test of the augmentation benchmark's core (the GPU suite calls it): tiny sizes, no timing assertions."""

from __future__ import annotations

import pytest

from bench.augment import bench_augment
from fastcifar.errors import UserError


def test_bench_augment_reports_every_pipeline() -> None:
    # aot_eager keeps the compiled route cheap here; Inductor's code is exercised by test_augment_compiled.
    record = bench_augment("cpu", batch_size=8, n_images=16, pil_images=4, compile_backend="aot_eager")
    rows = {r["pipeline"]: r for r in record["results"]}
    assert set(rows) == {"fastcifar", "fastcifar-compiled", "torchvision-v2-batch", "torchvision-pil"}
    assert rows["fastcifar"]["route"] == "eager" and rows["fastcifar-compiled"]["route"] == "compiled"
    assert rows["fastcifar-compiled"]["compile_backend"] == "aot_eager"
    assert rows["fastcifar"]["images"] == 16 and rows["torchvision-pil"]["images"] == 4
    assert rows["fastcifar"]["per_sample"] and not rows["torchvision-v2-batch"]["per_sample"]
    assert all(r["images_per_s"] > 0 and r["seconds"] > 0 for r in rows.values())
    for name in ("fastcifar", "fastcifar-compiled"):
        launches = rows[name]["launches"]
        # at least the six random draws (flip, crop, op and sign per RandAugment step) are counted
        assert launches["kernels_per_batch"] >= 6 and "aten" in launches["counted"]
        assert launches["by_name"].get("aten::randint") == 3 and launches["by_name"].get("aten::rand") == 3
    assert record["config"]["device"] == "cpu"
    skipped = bench_augment("cpu", batch_size=8, n_images=8, pil_images=0, routes=("eager",))
    assert {r["pipeline"] for r in skipped["results"]} == {"fastcifar", "torchvision-v2-batch"}


def test_bench_augment_rejects_unknown_routes() -> None:
    with pytest.raises(UserError):
        bench_augment("cpu", batch_size=8, n_images=8, pil_images=0, routes=("fast",))
