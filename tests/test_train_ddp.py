"""Two processes on CPU (gloo) through torchrun: disjoint shards, reduced metrics, rank-0 files."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_runs import command_line

REPO = Path(__file__).resolve().parents[1]
ENTRY = Path(__file__).with_name("seen_recorder.py")  # fastcifar.train with a recording batch hook


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def torchrun(*args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        *args,
    ]


@pytest.mark.slow
def test_two_ranks_on_gloo(train_data, tiny_flags, tmp_path):
    from seen_recorder import SeenRecorder

    from fastcifar.data.beton import read_beton
    from fastcifar.data.loaders import build_loader
    from fastcifar.models import create_model
    from fastcifar.training.checkpoint import load_checkpoint

    tiny = tiny_flags["model_kwargs"]
    out, seen = tmp_path / "run", tmp_path / "seen"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [*torchrun(str(ENTRY), str(seen)), *command_line({**tiny_flags, "out": out})]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("epoch   1/1") == 1  # one summary line: rank 0 prints, rank 1 does not

    ranks = [np.load(seen / f"seen-rank{r}.npz") for r in (0, 1)]
    # Train: each rank 32 of the 64 images (2 steps of 16); together exactly the whole split.
    _, train_labels, _ = read_beton(train_data / "synthetic" / "train.beton")
    assert [len(r["train_labels"]) for r in ranks] == [32, 32]
    together = np.sort(np.concatenate([r["train_labels"] for r in ranks]))
    np.testing.assert_array_equal(together, np.sort(train_labels))
    # Test: disjoint shards covering every image once (fingerprints of the un-augmented images).
    recorder = SeenRecorder()
    for images, labels in build_loader("gpu", "test", root=train_data, dataset="synthetic", batch_size=40):
        recorder("test", images, labels)
    everything = set(np.round(recorder.arrays()["test_fingerprints"], 6))
    shards = [set(np.round(r["test_fingerprints"], 6)) for r in ranks]
    assert len(everything) == 40 and not shards[0] & shards[1] and shards[0] | shards[1] == everything

    # The reduced test metrics equal a single-process evaluation of the saved (rank-0) model.
    row = json.loads((out / "metrics.jsonl").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and row["train_images"] == 64
    model = create_model("sk_densenet", num_classes=100, **tiny)
    model.load_state_dict(load_checkpoint(out / "checkpoint.pt")["model"])
    model.eval()
    images, labels = next(iter(build_loader("gpu", "test", root=train_data, dataset="synthetic", batch_size=40)))
    with torch.no_grad():
        logits = model(images)
    assert row["test_loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-5)
    assert row["top1"] == pytest.approx(100 * (logits.argmax(1) == labels).float().mean().item())
    top5 = (logits.topk(5, dim=1).indices == labels[:, None]).any(1).float().mean().item()
    assert row["top5"] == pytest.approx(100 * top5)
    # Files come from rank 0 only: every TensorBoard event file names one writer process
    # (events.out.tfevents.<time>.<host>.<pid>.<n>).
    events = list((out / "tb").rglob("events.out.tfevents.*"))
    assert events and len({path.name.split(".")[-2] for path in events}) == 1


@pytest.mark.slow
def test_unwritable_out_is_one_line_from_rank_zero(train_data, tiny_flags, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [*torchrun("-m", "fastcifar.train"), *command_line({**tiny_flags, "out": blocker / "run"})]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if line.startswith("fastcifar.train:")]
    assert len(ours) == 1 and ours[0].startswith("fastcifar.train: error: cannot write the run folder"), done.stderr
    # Rank 1 leaves quietly (exit 0, or stopped by torchrun once rank 0 has failed); rank 0 exits 2; no
    # rank prints a traceback (torchrun's own failure report, which follows, shows the launcher's stack).
    root_cause = done.stderr.split("Root Cause", 1)[1]
    assert "rank      : 0" in root_cause and "exitcode  : 2" in root_cause
    assert done.stderr.count("Traceback") == 1, done.stderr  # torchrun's own, ending in ChildFailedError
    launcher = done.stderr.split("Traceback", 1)[1]
    assert "torch/distributed/run.py" in launcher and "ChildFailedError" in launcher
