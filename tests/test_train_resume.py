"""Resume exactness: an interrupted and resumed run ends where an uninterrupted one does."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_runs import InterruptAtStep, train_tiny

EXACT_FIELDS = ("epoch", "test_loss", "top1", "top5", "lr", "train_images")


def run(tiny_flags, out, **flags):
    """Two epochs on the gpu loader, seed 3: the run every resume here is compared with."""
    return train_tiny(tiny_flags, out, **{"epochs": 2, "loader": "gpu", "seed": 3, **flags})


def rows(out):
    """The metrics.jsonl rows; none when the file does not exist (no epoch finished yet)."""
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def load(path):
    from fastcifar.training.checkpoint import load_checkpoint

    return load_checkpoint(path)


@pytest.fixture(scope="module")
def uninterrupted(tiny_flags, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    run(tiny_flags, out)
    return out


@pytest.mark.parametrize("interrupt_step", [4, 2], ids=["after-epoch", "mid-epoch"])
def test_resume_ends_at_the_uninterrupted_result(tiny_flags, uninterrupted, tmp_path, interrupt_step):
    import fastcifar.train as train_module

    out = tmp_path / "run"
    # 4 steps per epoch: 4 = end of epoch 1, 2 = its middle.
    first = run(tiny_flags, out, batch_hook=InterruptAtStep(interrupt_step))
    assert first["interrupted"] is True
    state = load(out / "checkpoint.pt")
    assert (state["epoch"], state["step"]) == ((1, 0) if interrupt_step == 4 else (0, 2))
    assert len(rows(out)) == (1 if interrupt_step == 4 else 0)
    assert not (out / "summary.json").exists()

    # Only the folder is given: everything else comes from the checkpoint's config.
    resumed = train_module.train(resume=str(out), device="cpu")

    expected, got = rows(uninterrupted), rows(out)
    assert [r["epoch"] for r in got] == [1, 2]
    for a, b in zip(expected, got, strict=True):
        assert {k: b[k] for k in EXACT_FIELDS} == {k: a[k] for k in EXACT_FIELDS}
        # The train loss sums the same per-step values, grouped differently around the interruption.
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-12)
    final = load(out / "checkpoint.pt")
    reference = load(uninterrupted / "checkpoint.pt")
    assert final["model"].keys() == reference["model"].keys()
    for name, tensor in reference["model"].items():
        assert torch.equal(final["model"][name], tensor), name
    summary = json.loads((uninterrupted / "summary.json").read_text())
    assert resumed["final_top1"] == summary["final_top1"] and resumed["epochs"] == 2


def test_resume_of_a_finished_run_trains_nothing_and_keeps_its_summary(uninterrupted):
    from fastcifar.train import train

    summary = (uninterrupted / "summary.json").read_text()
    metrics = (uninterrupted / "metrics.jsonl").read_text()
    assert train(resume=str(uninterrupted)) == json.loads(summary)  # finishing is idempotent: exit 0
    assert (uninterrupted / "summary.json").read_text() == summary
    assert (uninterrupted / "metrics.jsonl").read_text() == metrics


def test_resume_needs_a_checkpoint(tmp_path):
    from fastcifar.errors import UserError
    from fastcifar.train import train

    with pytest.raises(UserError, match="no checkpoint"):
        train(resume=str(tmp_path))
