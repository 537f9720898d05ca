"""The command line: every bad input is one clear line (exit != 0), Ctrl-C saves and exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = '{"growth_rate": 4, "block_config": (1, 1)}'


@pytest.fixture(scope="session")
def train_data(tmp_path_factory):
    """A small synthetic dataset (64 train / 40 test images), shared by the training tests."""
    from fastcifar.data.prepare import prepare

    root = tmp_path_factory.getbasetemp() / "train-synthetic"
    prepare(dataset="synthetic", root=root, n_train=64, n_test=40, seed=0)
    return root


def launch(args: list[str], cwd: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "fastcifar.train", *args], cwd=cwd, env=env, text=True, **kwargs
    )


BAD_INPUTS = {
    "unknown arch": (["--arch", "nope"], "sk_densenet"),  # the message lists the valid ids
    "epochs zero": (["--epochs", "0"], "--epochs must be at least 1"),
    "epochs negative": (["--epochs", "-3"], "--epochs must be at least 1"),
    "epochs not a number": (["--epochs", "many"], "--epochs must be an integer"),
    "unknown loader": (["--loader", "dali"], "ffcv, gpu, torch"),
    "unknown amp": (["--amp", "fp8"], "bf16, fp16, off"),
    "unknown dataset": (["--dataset", "mnist"], "cifar100, cifar10, synthetic"),
    "unknown kernels": (["--kernels", "cuda"], "triton, torch"),
    "both presets": (["--fast", "--baseline"], "--fast and --baseline"),
    "typo in a flag": (["--epoch", "3"], "unknown flag --epoch"),
    "bad model kwargs": (["--model_kwargs", "{'depth': 3}"], "no option 'depth'"),
    "bad device": (["--device", "tpu"], "--device"),
    "cuda without cuda": (["--device", "cuda"], "CUDA is not available"),
    "negative lr": (["--lr", "-0.1"], "--lr must be positive"),
    "resume without run": (["--resume", "nowhere"], "no checkpoint"),
    "batch larger than the dataset": (["--batch_size", "1000"], "larger than the 64 train images"),
}


def test_every_bad_input_is_one_clear_line(train_data, tmp_path):
    import torch

    cases = dict(BAD_INPUTS)
    if torch.cuda.is_available():
        del cases["cuda without cuda"]
    common = ["--data_root", str(train_data), "--model_kwargs", TINY, "--out", str(tmp_path / "run")]
    processes = {}
    for name, (args, _) in cases.items():
        # Flags given twice: fire keeps the last one, so the case's own flags come last.
        base = [a for a in common if not (args[0] == "--model_kwargs" and a in ("--model_kwargs", TINY))]
        dataset = [] if "--dataset" in args else ["--dataset", "synthetic"]
        device = [] if "--device" in args else ["--device", "cpu"]
        processes[name] = launch(
            [*base, *dataset, *device, *args], tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=120)
        expected = cases[name][1]
        assert process.returncode not in (0, None), f"{name}: exit 0\n{stderr}"
        assert "Traceback" not in stderr, f"{name}:\n{stderr}"
        lines = stderr.strip().splitlines()
        assert len(lines) == 1, f"{name}: {len(lines)} lines\n{stderr}"
        assert lines[0].startswith("fastcifar.train: error: "), f"{name}: {lines[0]}"
        assert expected in lines[0], f"{name}: {lines[0]!r} lacks {expected!r}"
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_missing_betons_are_prepared_first(tmp_path, monkeypatch):
    import fastcifar.data.prepare as prepare_module
    from fastcifar.distributed import DistContext
    from fastcifar.train import ensure_dataset, resolve_config

    calls = []
    real_prepare = prepare_module.prepare

    def small_prepare(dataset, root):
        calls.append((dataset, root))
        return real_prepare(dataset=dataset, root=root, n_train=32, n_test=16)

    monkeypatch.setattr(prepare_module, "prepare", small_prepare)
    config = resolve_config(dataset="synthetic", data_root=str(tmp_path / "data"), out=str(tmp_path / "run"))
    ensure_dataset(config, DistContext())
    assert calls == [("synthetic", str(tmp_path / "data"))]
    assert prepare_module.load_meta(tmp_path / "data", "synthetic")["num_classes"] == 100
    ensure_dataset(config, DistContext())  # prepared now: no second call
    assert len(calls) == 1


def test_presets_and_explicit_flags():
    from fastcifar.train import resolve_config

    fast = resolve_config(fast=True, out="x")
    assert (fast.compile, fast.channels_last, fast.amp, fast.loader, fast.kernels) == (True, True, "bf16", "gpu", "triton")
    base = resolve_config(baseline=True, out="x")
    assert (base.compile, base.channels_last, base.amp, base.loader, base.kernels) == (False, False, "off", "torch", "torch")
    mixed = resolve_config(fast=True, amp="fp16", loader="ffcv", out="x")  # an explicit flag beats the preset
    assert (mixed.amp, mixed.loader, mixed.compile) == ("fp16", "ffcv", True)
    study = resolve_config(out="x")
    assert (study.epochs, study.batch_size, study.lr, study.label_smoothing) == (30, 256, 0.01, 0.0)
    assert resolve_config(arch="resnet18").out.startswith(str(Path("runs") / "resnet18-"))


def test_ctrl_c_saves_a_resumable_checkpoint(train_data, tmp_path):
    out = tmp_path / "run"
    stdout_path, stderr_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with stdout_path.open("w") as stdout, stderr_path.open("w") as stderr:
        process = launch(
            ["--arch", "sk_densenet", "--model_kwargs", TINY, "--dataset", "synthetic", "--data_root", str(train_data),
             "--device", "cpu", "--epochs", "200", "--batch_size", "16", "--eval_batch_size", "40", "--out", str(out)],
            tmp_path, stdout=stdout, stderr=stderr,
        )
        deadline = time.monotonic() + 120
        # Wait until training runs (the progress bar of an epoch has appeared), then press Ctrl-C.
        while "epoch 1/200" not in stderr_path.read_text():
            assert process.poll() is None, stderr_path.read_text()
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=120)
    message = stdout_path.read_text()
    assert process.returncode == 0, stderr_path.read_text()
    assert f"--resume {out}" in message and "checkpoint saved" in message
    import torch

    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["config"]["epochs"] == 200 and state["epoch"] * 4 + state["step"] >= 1
    assert state["epoch"] < 200
