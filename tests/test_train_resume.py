"""Resume exactness: an interrupted and resumed run ends where an uninterrupted one does."""

from __future__ import annotations

import json
import signal

import pytest
import torch

TINY = {"growth_rate": 4, "block_config": (1, 1)}
EXACT_FIELDS = ("epoch", "test_loss", "top1", "top5", "lr", "train_images")


@pytest.fixture(scope="session")
def train_data(tmp_path_factory):
    """A small synthetic dataset (64 train / 40 test images), shared by the training tests."""
    from fastcifar.data.prepare import prepare

    root = tmp_path_factory.getbasetemp() / "train-synthetic"
    prepare(dataset="synthetic", root=root, n_train=64, n_test=40, seed=0)
    return root


class InterruptAtStep:
    """Stands in for the debugging batch hook: sends this process SIGINT during train step ``at``."""

    at = 0

    def __init__(self, folder, rank) -> None:
        self.train_steps = 0

    def __call__(self, split, images, labels) -> None:
        if split == "train":
            self.train_steps += 1
            if self.train_steps == self.at:
                signal.raise_signal(signal.SIGINT)

    def save(self) -> None:
        pass


def run(root, out, **flags):
    from fastcifar.train import train

    options = dict(
        arch="sk_densenet", model_kwargs=TINY, epochs=2, batch_size=16, eval_batch_size=16, loader="gpu",
        dataset="synthetic", data_root=str(root), device="cpu", out=str(out), seed=3,
    )
    options.update(flags)
    return train(**options)


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(train_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    run(train_data, out)
    return out


@pytest.mark.parametrize("interrupt_step", [4, 2], ids=["after-epoch", "mid-epoch"])
def test_resume_ends_at_the_uninterrupted_result(train_data, uninterrupted, tmp_path, monkeypatch, interrupt_step):
    import fastcifar.train as train_module

    out = tmp_path / "run"
    InterruptAtStep.at = interrupt_step  # 4 steps per epoch: 4 = end of epoch 1, 2 = its middle
    monkeypatch.setenv(train_module.SEEN_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(train_module, "SeenRecorder", InterruptAtStep)
    first = run(train_data, out)
    assert first["interrupted"] is True
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert (state["epoch"], state["step"]) == ((1, 0) if interrupt_step == 4 else (0, 2))
    assert len(rows(out)) == (1 if interrupt_step == 4 else 0)
    assert not (out / "summary.json").exists()

    monkeypatch.delenv(train_module.SEEN_DIR_ENV)
    # Only the folder is given: everything else comes from the checkpoint's config.
    resumed = train_module.train(resume=str(out), device="cpu")

    expected, got = rows(uninterrupted), rows(out)
    assert [r["epoch"] for r in got] == [1, 2]
    for a, b in zip(expected, got):
        assert {k: b[k] for k in EXACT_FIELDS} == {k: a[k] for k in EXACT_FIELDS}
        # The train loss sums the same per-step values, grouped differently around the interruption.
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-12)
    final = torch.load(out / "checkpoint.pt", weights_only=False)
    reference = torch.load(uninterrupted / "checkpoint.pt", weights_only=False)
    assert final["model"].keys() == reference["model"].keys()
    for name, tensor in reference["model"].items():
        assert torch.equal(final["model"][name], tensor), name
    summary = json.loads((uninterrupted / "summary.json").read_text())
    assert resumed["final_top1"] == summary["final_top1"] and resumed["epochs"] == 2


def test_resume_of_a_finished_run_is_refused(uninterrupted):
    from fastcifar.errors import UserError
    from fastcifar.train import train

    with pytest.raises(UserError, match="already finished"):
        train(resume=str(uninterrupted))


def test_resume_needs_a_checkpoint(tmp_path):
    from fastcifar.errors import UserError
    from fastcifar.train import train

    with pytest.raises(UserError, match="no checkpoint"):
        train(resume=str(tmp_path))
