"""Training engine and end-to-end runs on tiny synthetic data (CPU)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tiny_runs import train_tiny
from torch import nn

METRIC_FIELDS = ("epoch", "train_loss", "test_loss", "top1", "top5", "images_per_s", "epoch_seconds", "lr")


# ------------------------------------------------------------------------------------------
# Engine pieces against independent references


def test_onecycle_schedule_follows_the_recipe():
    from fastcifar.training.engine import build_optimizer

    params = [nn.Parameter(torch.zeros(2))]
    epochs, steps = 3, 10
    optimizer, scheduler = build_optimizer(
        params, max_lr=0.01, epochs=epochs, steps_per_epoch=steps, device=torch.device("cpu")
    )
    assert optimizer.param_groups[0]["betas"][1] == 0.999
    lrs, beta1s = [], []
    for _ in range(epochs * steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        beta1s.append(optimizer.param_groups[0]["betas"][0])
        optimizer.step()
        scheduler.step()
    total = epochs * steps
    peak = int(0.3 * total) - 1  # OneCycle's phase end: pct_start * total_steps - 1
    assert lrs[0] == pytest.approx(0.01 / 25)
    assert max(lrs) == pytest.approx(0.01)
    assert lrs.index(max(lrs)) == peak
    # Cosine annealing from max_lr to initial_lr / 1e4 over the remaining steps.
    final = 0.01 / 25 / 1e4
    t = (total - 1 - peak) / (total - 1 - peak)
    assert lrs[-1] == pytest.approx(final + (0.01 - final) * (1 + math.cos(math.pi * t)) / 2)
    assert beta1s[0] == pytest.approx(0.95) and beta1s[peak] == pytest.approx(0.85)
    assert beta1s[-1] == pytest.approx(0.95)


@pytest.mark.parametrize("pad", [False, True])
def test_evaluate_matches_direct_computation(pad):
    from fastcifar.training.engine import StepSettings, evaluate

    torch.manual_seed(0)
    images = torch.randn(23, 3, 4, 4)
    labels = torch.randint(0, 7, (23,))
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 7), nn.BatchNorm1d(7))
    model.train()
    model(torch.randn(16, 3, 4, 4))  # give BatchNorm non-trivial running statistics
    batches = [(images[i : i + 8], labels[i : i + 8]) for i in range(0, 23, 8)]  # 8, 8, 7
    result = evaluate(model, batches, StepSettings(device=torch.device("cpu")), pad_last_batch=pad)

    model.eval()
    with torch.no_grad():
        logits = model(images)
    top5 = logits.topk(5, dim=1).indices
    assert result.samples == 23
    assert result.loss == pytest.approx(nn.functional.cross_entropy(logits, labels).item(), rel=1e-6)
    assert result.top1 == pytest.approx(100 * (logits.argmax(1) == labels).float().mean().item())
    assert result.top5 == pytest.approx(100 * (top5 == labels[:, None]).any(1).float().mean().item())
    assert model.training is False  # evaluate restores the mode it found (eval here)


def test_train_one_epoch_matches_a_plain_loop():
    from fastcifar.training.engine import StepSettings, build_optimizer, build_scaler, train_one_epoch

    def make():
        torch.manual_seed(1)
        return nn.Sequential(nn.Flatten(), nn.Linear(12, 5))

    torch.manual_seed(2)
    batches = [(torch.randn(4, 3, 2, 2), torch.randint(0, 5, (4,))) for _ in range(6)]
    settings = StepSettings(device=torch.device("cpu"), label_smoothing=0.1)

    model = make()
    optimizer, scheduler = build_optimizer(
        model.parameters(), max_lr=0.01, epochs=1, steps_per_epoch=6, device=settings.device
    )
    result = train_one_epoch(model, batches, optimizer, scheduler, build_scaler(settings), settings, log_every=4)

    reference = make()
    ref_opt = torch.optim.Adam(reference.parameters(), lr=0.01, betas=(0.9, 0.999))
    ref_sched = torch.optim.lr_scheduler.OneCycleLR(ref_opt, max_lr=0.01, total_steps=6, pct_start=0.3)
    losses = []
    for x, y in batches:
        loss = nn.functional.cross_entropy(reference(x), y, label_smoothing=0.1)
        ref_opt.zero_grad()
        loss.backward()
        ref_opt.step()
        ref_sched.step()
        losses.append(loss.item())
    assert result.samples == 24 and result.steps == 6 and not result.interrupted
    assert result.loss == pytest.approx(sum(losses) / 6, rel=1e-6)
    for mine, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs)


def test_nan_loss_stops_with_a_clear_error():
    from fastcifar.training.engine import NonFiniteLoss, StepSettings, build_optimizer, build_scaler, train_one_epoch

    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    with torch.no_grad():
        model[1].bias[0] = float("nan")
    batches = [(torch.randn(4, 3, 2, 2), torch.randint(0, 5, (4,))) for _ in range(3)]
    settings = StepSettings(device=torch.device("cpu"))
    optimizer, scheduler = build_optimizer(
        model.parameters(), max_lr=0.01, epochs=1, steps_per_epoch=3, device=settings.device
    )
    with pytest.raises(NonFiniteLoss, match="NaN") as failed:
        train_one_epoch(model, batches, optimizer, scheduler, build_scaler(settings), settings, log_every=2)
    assert "checkpoint" not in str(failed.value)  # what is kept on disk is the run's to say


def test_time_to_thresholds():
    from fastcifar.training.metrics import time_to_thresholds

    history = [
        {"epoch_seconds": 2.0, "top1": 40.0},
        {"epoch_seconds": 3.0, "top1": 62.0},
        {"epoch_seconds": 1.0, "top1": 71.0},
    ]
    assert time_to_thresholds(history) == {"50": 5.0, "60": 5.0, "70": 6.0, "75": None}


# ------------------------------------------------------------------------------------------
# End to end


@pytest.mark.parametrize("loader", ["gpu", "ffcv", "torch"])
def test_one_epoch_end_to_end(tiny_flags, tmp_path, loader):
    out = tmp_path / "run"
    summary = train_tiny(tiny_flags, out, loader=loader)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and set(METRIC_FIELDS) <= set(rows[0])
    row = rows[0]
    assert row["epoch"] == 1 and math.isfinite(row["train_loss"]) and math.isfinite(row["test_loss"])
    assert 0 <= row["top1"] <= row["top5"] <= 100 and row["images_per_s"] > 0
    # 64 images, batch 16, drop_last: 4 steps; the last lr is the schedule's end.
    assert row["train_images"] == 64
    assert row["lr"] == pytest.approx(0.01 / 25 / 1e4, rel=1e-3)
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["final_top1"] == summary["final_top1"] == row["top1"]
    assert on_disk["config"]["loader"] == loader
    assert on_disk["step"]["optimizer"]["class"] == "torch.optim.adam.Adam"
    assert on_disk["step"]["schedule"]["name"] == "onecycle"
    assert (out / "curves.png").stat().st_size > 0 and (out / "checkpoint.pt").is_file()
    assert any((out / "tb").iterdir())


def test_metrics_and_summary_are_consistent(tiny_flags, tmp_path):
    out = tmp_path / "run"
    summary = train_tiny(tiny_flags, out, epochs=3, label_smoothing=0.1, lr=0.02)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and summary["epochs"] == 3
    assert summary["best_top1"] == max(r["top1"] for r in rows) >= summary["final_top1"] == rows[-1]["top1"]
    assert summary["best_top5"] >= summary["final_top5"] == rows[-1]["top5"]
    assert summary["total_seconds"] == pytest.approx(sum(r["epoch_seconds"] for r in rows), abs=0.01)
    assert len(summary["epoch_seconds"]) == 3 and summary["images_per_s"] > 0
    assert set(summary["time_to_top1_seconds"]) == {"50", "60", "70", "75"}
    for threshold, seconds in summary["time_to_top1_seconds"].items():
        reached = [r for r in rows if r["top1"] >= float(threshold)]
        assert (seconds is None) == (not reached)
    assert summary["config"]["label_smoothing"] == 0.1 and summary["config"]["lr"] == 0.02
    assert summary["versions"]["torch"] == torch.__version__
    # The learning rate follows OneCycle: up, then down to max_lr / 25 / 1e4 at the end.
    assert rows[-1]["lr"] == pytest.approx(0.02 / 25 / 1e4, rel=1e-3)


@pytest.mark.slow
def test_compiled_matches_eager(tiny_flags, tmp_path):
    # Compilation on CPU is slow: the smallest model (one dense block) for one epoch of 4 steps.
    smallest = {**tiny_flags["model_kwargs"], "block_config": (1,)}
    eager = train_tiny(tiny_flags, tmp_path / "eager", model_kwargs=smallest)
    compiled = train_tiny(tiny_flags, tmp_path / "compiled", model_kwargs=smallest, compile=True)
    rows = {
        name: [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        for name in ("eager", "compiled")
    }
    for a, b in zip(rows["eager"], rows["compiled"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=2e-3)
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=2e-3)
    assert compiled["compile_seconds"] > 0 and eager["compile_seconds"] == 0
    # Inductor's cache lookups: forward, backward and the evaluation forward at least (hit or not:
    # this process's cache may hold them from an earlier test).
    from fastcifar.training.compile_cache import resolve_cache_dir

    cache = compiled["compile_cache"]
    assert cache["dir"] == resolve_cache_dir()[0] and cache["hits"] + cache["misses"] >= 3
    assert cache["hit"] == (cache["misses"] == 0)
    assert eager["compile_cache"] == {"dir": None, "hits": 0, "misses": 0, "bypasses": 0, "hit": None}


def test_recipe_flags_reach_the_run(tiny_flags, tmp_path, monkeypatch):
    """--weight_decay, --schedule constant and --norandaugment (the notebooks that deviate) take effect."""
    import fastcifar.data.loaders as loaders
    from fastcifar.training.checkpoint import load_checkpoint

    seen = []
    real_build_loader = loaders.build_loader

    def build_loader(kind, split, **options):
        seen.append((split, options.get("randaugment", True)))
        return real_build_loader(kind, split, **options)

    monkeypatch.setattr(loaders, "build_loader", build_loader)
    out = tmp_path / "run"
    summary = train_tiny(tiny_flags, out, weight_decay=5e-4, schedule="constant", randaugment=False, lr=0.004)
    assert ("train", False) in seen
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["lr"] == pytest.approx(0.004 / 25)  # OneCycle's starting lr, never stepped
    groups = load_checkpoint(out / "checkpoint.pt")["optimizer"]["param_groups"]
    assert groups[0]["weight_decay"] == 5e-4 and groups[0]["betas"][0] == pytest.approx(0.95)
    config = summary["config"]
    assert (config["weight_decay"], config["schedule"], config["randaugment"]) == (5e-4, "constant", False)
