"""The command line: every bad input is one clear line (exit != 0), Ctrl-C saves and exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_checks import assert_user_error, call_main
from tiny_runs import command_line

REPO = Path(__file__).resolve().parents[1]
PROG = "fastcifar.train"


@pytest.fixture(scope="module")
def tiny(tiny_flags) -> str:
    """The tiny model's --model_kwargs on the command line."""
    return repr(tiny_flags["model_kwargs"])


def launch(args: list[str], cwd: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "fastcifar.train", *args], cwd=cwd, env=env, text=True, **kwargs)


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
    # Mistakes that used to be accepted, crash or run with a surprising meaning.
    "stray positional argument": (["--lr", "0.01", "3"], "unexpected argument '3'"),
    "anything after --": (["--", "--help"], "nothing may follow --"),
    "model option of the wrong type": (["--model_kwargs", '{"growth_rate": "abc"}'], "growth_rate"),
    "device cuda:abc": (["--device", "cuda:abc"], "'cuda:abc' is not a device"),
    "device cuda:-1": (["--device", "cuda:-1"], "'cuda:-1' is not a device"),
    "seed too large for numpy": (["--seed", "4294967296"], "--seed must be at most 4294967295"),
    "batch of one": (["--batch_size", "1"], "--batch_size must be at least 2"),
    "unknown schedule": (["--schedule", "cosine"], "onecycle, constant"),
    "negative weight decay": (["--weight_decay", "-1"], "--weight_decay must be at least 0"),
    "out holds a run": (["--out", "{existing}"], "--resume"),
    "resume changing the run": (["--resume", "{existing}", "--epochs", "5"], "--epochs: saved 30, given 5"),
    "unwritable compile cache": (
        ["--compile", "--compile_cache", "{existing}/checkpoint.pt/cache"],
        "cannot write the compile cache",
    ),
}


def test_every_bad_input_is_one_clear_line(train_data, tiny, tmp_path, capsys, monkeypatch):
    """In-process through main() (the command line's own code path: flag check, fire, run_cli)."""
    import torch

    from fastcifar.train import main
    from fastcifar.training.checkpoint import save_checkpoint

    existing = tmp_path / "existing"  # holds a run: a (minimal) checkpoint and metrics
    save_checkpoint(existing / "checkpoint.pt", {"epoch": 1, "config": {}})
    (existing / "metrics.jsonl").write_text("{}\n")
    cases = {
        name: ([a.replace("{existing}", str(existing)) for a in args], expected)
        for name, (args, expected) in BAD_INPUTS.items()
    }
    if torch.cuda.is_available():
        del cases["cuda without cuda"]
    common = {
        "--data_root": str(train_data),
        "--model_kwargs": tiny,
        "--out": str(tmp_path / "run"),
        "--dataset": "synthetic",
        "--device": "cpu",
        "--batch_size": "16",
    }
    monkeypatch.setattr(sys, "argv", ["fastcifar.train"])
    monkeypatch.chdir(tmp_path)
    for args, expected in cases.values():
        # A valid command line with the case's flags replacing their common values ("--" ends the line).
        resuming = "--resume" in args
        base = [part for flag, value in common.items() if flag not in args and not resuming for part in (flag, value)]
        assert_user_error(call_main(main, [*base, *args], capsys), PROG, expected)
    assert not (tmp_path / "run").exists()  # no case left a folder behind
    assert sorted(p.name for p in existing.iterdir()) == ["checkpoint.pt", "metrics.jsonl"]  # untouched
    assert (existing / "metrics.jsonl").read_text() == "{}\n"


def test_bad_input_from_the_shell_has_no_traceback(tmp_path):
    """The real entry point (python -m fastcifar.train): one line, exit 2."""
    for args, expected in ((["--out", "x", "3"], "unexpected argument '3'"), (["--arch", "nope"], "sk_densenet")):
        process = launch([*args, "--device", "cpu"], tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, stderr = process.communicate(timeout=300)
        assert_user_error(subprocess.CompletedProcess(process.args, process.returncode, "", stderr), PROG, expected)


def test_help_lists_every_flag_with_its_description(tmp_path):
    from fastcifar.training.config import flag_help

    done = subprocess.run(
        [sys.executable, "-m", "fastcifar.train", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "PAGER": "cat"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    text = " ".join((done.stdout + done.stderr).split())  # fire wraps long lines
    for name, description in flag_help().items():
        assert f"--{name}" in text and " ".join(description.split()) in text, name


def test_command_line_flags_are_the_config_fields():
    """TrainConfig is the one list: the CLI accepts exactly its fields plus --resume / --fast / --baseline."""
    from dataclasses import fields

    from fastcifar.train import train_command
    from fastcifar.training.config import EXTRA_FLAGS, TrainConfig

    flags = train_command().flags
    assert [flag.name for flag in flags] == [f.name for f in fields(TrainConfig)] + list(EXTRA_FLAGS)
    defaults = TrainConfig()
    for flag in flags[: len(fields(TrainConfig))]:
        assert flag.default == getattr(defaults, flag.name)
        assert not flag.positional  # no positional arguments


def test_flags_on_the_command_line():
    from fastcifar.cli import parse_command_line
    from fastcifar.errors import UserError
    from fastcifar.train import train_command

    def given(argv):
        return parse_command_line(argv, train_command())[1]

    assert given(["--lr", "0.1", "--compile", "--noamp", "--out=x", "-o", "y"]) == {
        "lr": 0.1,
        "compile": True,
        "amp": False,
        "out": "y",
    }
    assert given(["--lr", "-0.5"]) == {"lr": -0.5}  # a negative number is a value, not a flag
    for argv, message in (
        (["--out", "x", "3"], "unexpected argument '3'"),
        (["--out", "x", "--", "--lr", "3"], "nothing may follow --"),
        (["--epoch", "3"], "unknown flag --epoch"),
        (["-z"], "unknown flag -z"),
    ):
        with pytest.raises(UserError, match=message):
            given(argv)


def test_missing_betons_are_prepared_first(tmp_path, monkeypatch):
    import fastcifar.data.prepare as prepare_module
    from fastcifar.training.config import resolve_config
    from fastcifar.training.distributed import DistContext
    from fastcifar.training.run import ensure_dataset

    calls = []
    real_prepare = prepare_module.prepare

    def small_prepare(dataset, root):
        calls.append((dataset, root))
        return real_prepare(dataset=dataset, root=root, n_train=32, n_test=16)

    monkeypatch.setattr(prepare_module, "prepare", small_prepare)
    config = resolve_config(dataset="synthetic", data_root=str(tmp_path / "data"), out=str(tmp_path / "run"))
    ensure_dataset(config, DistContext())
    assert calls == [("synthetic", str(tmp_path / "data"))]  # (absolute already)
    assert prepare_module.load_meta(tmp_path / "data", "synthetic")["num_classes"] == 100
    ensure_dataset(config, DistContext())  # prepared now: no second call
    assert len(calls) == 1


def test_presets_and_explicit_flags():
    from fastcifar.train import resolve_config
    from fastcifar.training.config import presets
    from fastcifar.training.variant import BASELINE, FAST

    # The GPU preset (on a CPU --fast differs: test_variant.py::test_fast_on_a_cpu_is_the_layout_that_trains_there).
    assert presets("cuda")["fast"] == {**FAST.describe(), "loader": "gpu"}
    assert (FAST.compile, FAST.channels_last, FAST.amp, FAST.kernels) == (True, True, "bf16", "triton")
    base = resolve_config(baseline=True, out="x")
    assert base.variant == BASELINE and base.loader == "torch"
    mixed = resolve_config(fast=True, device="cpu", amp="fp16", loader="ffcv", out="x")  # explicit beats the preset
    assert (mixed.amp, mixed.loader, mixed.compile) == ("fp16", "ffcv", True)
    study = resolve_config(out="x")
    assert (study.epochs, study.batch_size, study.lr, study.label_smoothing) == (30, 256, 0.01, 0.0)
    assert (study.weight_decay, study.schedule, study.randaugment) == (0.0, "onecycle", True)
    assert resolve_config(arch="resnet18").out.startswith(str(Path("runs").absolute() / "resnet18-"))


def test_paths_are_stored_absolute_with_home_expanded(tmp_path, monkeypatch):
    from fastcifar.train import resolve_config

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    config = resolve_config(data_root="~/cifar", out="runs/a")
    assert config.data_root == str(tmp_path / "home" / "cifar")
    assert config.out == str(tmp_path / "runs" / "a")


def test_ctrl_c_saves_a_resumable_checkpoint(tiny_flags, tmp_path):
    out = tmp_path / "run"
    stdout_path, stderr_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with stdout_path.open("w") as stdout, stderr_path.open("w") as stderr:
        process = launch(
            command_line({**tiny_flags, "epochs": 200, "eval_batch_size": 40, "out": out}),
            tmp_path,
            stdout=stdout,
            stderr=stderr,
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
    from fastcifar.training.checkpoint import load_checkpoint

    state = load_checkpoint(out / "checkpoint.pt")
    assert state["config"]["epochs"] == 200 and state["epoch"] * 4 + state["step"] >= 1
    assert state["epoch"] < 200


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP], ids=lambda s: s.name)
def test_a_cluster_stop_signal_saves_and_exits_preempted(tiny_flags, tmp_path, signum):
    """SIGTERM / SIGUSR1 / SIGHUP are Ctrl-C with their own exit status (75); the printed resume
    command is shell-quoted, so a run folder with a space survives a paste."""
    import shlex

    from fastcifar.preemption import PREEMPTED_EXIT_CODE
    from fastcifar.training.checkpoint import load_checkpoint

    out = tmp_path / "my runs" / "run"
    stdout_path, stderr_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with stdout_path.open("w") as stdout, stderr_path.open("w") as stderr:
        flags = {**tiny_flags, "epochs": 200, "eval_batch_size": 40, "out": out}
        process = launch(command_line(flags), tmp_path, stdout=stdout, stderr=stderr)
        deadline = time.monotonic() + 120
        while "epoch 1/200" not in stderr_path.read_text():
            assert process.poll() is None, stderr_path.read_text()
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        process.send_signal(signum)
        process.wait(timeout=120)
    assert process.returncode == PREEMPTED_EXIT_CODE, stderr_path.read_text()
    last = stdout_path.read_text().strip().splitlines()[-1]
    assert last.startswith(f"preempted by {signum.name} ") and "checkpoint saved" in last
    assert shlex.split(last.split("continue with: ", 1)[1]) == ["python", "-m", "fastcifar.train", "--resume", str(out)]
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["epoch"] * 4 + state["step"] >= 1 and state["epoch"] < 200
