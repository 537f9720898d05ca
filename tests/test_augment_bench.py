"""Smoke test of the augmentation benchmark's core (the GPU suite calls it): tiny sizes, no timing assertions."""

from __future__ import annotations

from bench.augment import bench_augment


def test_bench_augment_reports_every_pipeline() -> None:
    record = bench_augment("cpu", batch_size=8, n_images=16, pil_images=4)
    rows = {r["pipeline"]: r for r in record["results"]}
    assert set(rows) == {"fastcifar", "torchvision-v2-batch", "torchvision-pil"}
    assert rows["fastcifar"]["images"] == 16 and rows["torchvision-pil"]["images"] == 4
    assert rows["fastcifar"]["per_sample"] and not rows["torchvision-v2-batch"]["per_sample"]
    assert all(r["images_per_s"] > 0 and r["seconds"] > 0 for r in rows.values())
    assert record["config"]["device"] == "cpu"
    skipped = bench_augment("cpu", batch_size=8, n_images=8, pil_images=0)
    assert {r["pipeline"] for r in skipped["results"]} == {"fastcifar", "torchvision-v2-batch"}
