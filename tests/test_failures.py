"""What happens when a run goes wrong: nothing lost, nothing mixed, nothing silent (docs/failures.md)."""

from __future__ import annotations

import errno
import json
import shutil

import pytest
from tiny_runs import InterruptAtStep, train_tiny

from fastcifar.errors import UserError


@pytest.fixture(scope="module")
def interrupted(tiny_flags, tmp_path_factory):
    """A 2-epoch run stopped by Ctrl-C in the middle of epoch 2 (checkpoint + checkpoint.prev.pt)."""
    out = tmp_path_factory.mktemp("interrupted") / "run"
    assert train_tiny(tiny_flags, out, epochs=2, batch_hook=InterruptAtStep(6))["interrupted"]
    return out


@pytest.fixture
def stopped_run(interrupted, tmp_path):
    """A private copy of the interrupted run."""
    return shutil.copytree(interrupted, tmp_path / "run")


def test_a_new_run_never_writes_into_another_run(tiny_flags, stopped_run):
    before = {p.name: p.read_bytes() for p in stopped_run.iterdir() if p.is_file()}
    with pytest.raises(UserError, match="already holds a run") as refused:
        train_tiny(tiny_flags, stopped_run, epochs=2)
    assert f"--resume {stopped_run}" in str(refused.value)
    assert {p.name: p.read_bytes() for p in stopped_run.iterdir() if p.is_file()} == before


def test_resume_refuses_flags_that_change_the_run(stopped_run):
    from fastcifar.train import train

    with pytest.raises(UserError) as refused:
        train(resume=str(stopped_run), epochs=5, lr=0.1, seed=0, dataset="synthetic")
    message = str(refused.value)
    # Each differing flag named with both values; the ones equal to the saved run are not named.
    assert "--epochs: saved 2, given 5; --lr: saved 0.01, given 0.1 " in message
    assert "--seed" not in message and "--dataset" not in message
    assert "--device, --workers, --log_every" in message


def test_resume_with_the_command_that_started_the_run(tiny_flags, stopped_run, capsys):
    """The starting command with --resume added is accepted when every flag equals its saved value,
    the model options spelled differently (JSON, keys reordered, a list for a tuple) included."""
    from tiny_runs import command_line

    from fastcifar.train import main

    kwargs = json.dumps(dict(reversed(list(tiny_flags["model_kwargs"].items()))))

    def argv(**changes):
        flags = {**tiny_flags, "epochs": 2, "out": stopped_run, **changes}
        return [
            *command_line({name: value for name, value in flags.items() if name != "model_kwargs"}),
            "--model_kwargs",
            kwargs,
            "--resume",
        ]

    main([*argv(), "--log_every", "2"])
    assert "done: final top1" in capsys.readouterr().out
    assert json.loads((stopped_run / "summary.json").read_text())["epochs"] == 2
    with pytest.raises(SystemExit) as exited:  # one changed flag among equal ones: only it is named
        main(argv(epochs=3))
    assert exited.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--epochs: saved 2, given 3 " in line and "--model_kwargs" not in line and "--out" not in line


def test_resume_cleans_stale_temporaries_and_finishes(stopped_run, tmp_path, monkeypatch):
    from fastcifar.train import train

    # What a SIGKILL during atomic writes leaves behind, and a file the run does not own.
    stale = [stopped_run / ".checkpoint.pt.k9x2.tmp", stopped_run / ".metrics.jsonl.a1b2.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    foreign = stopped_run / ".notes.txt.tmp"
    foreign.write_text("mine")
    monkeypatch.chdir(tmp_path / "..")  # the saved config's paths are absolute: any folder works
    summary = train(resume=str(stopped_run), device="cpu", log_every=2)
    assert summary["epochs"] == 2
    assert not any(path.exists() for path in stale) and foreign.exists()


def test_a_new_run_in_a_folder_cleans_stale_temporaries(tiny_flags, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    stale = out / ".checkpoint.pt.zz12.tmp"
    stale.write_bytes(b"half")
    train_tiny(tiny_flags, out)
    assert not stale.exists() and (out / "summary.json").exists()


def test_clean_up_keeps_the_temporary_file_of_a_write_in_progress(tmp_path):
    from fastcifar.atomic import atomic_path, remove_stale_temporaries

    dead = tmp_path / ".checkpoint.pt.dead.tmp"  # what a killed writer left: no lock held
    dead.write_bytes(b"left over")
    with atomic_path(tmp_path / "checkpoint.pt") as live:  # another process's write, lock held
        live.write_bytes(b"being written")
        removed = remove_stale_temporaries(tmp_path, ["checkpoint.pt"])
        assert removed == [dead] and live.exists()
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"being written" and not live.exists()


def test_a_damaged_checkpoint_is_refused_naming_the_previous_one(stopped_run):
    from fastcifar.train import train

    path = stopped_run / "checkpoint.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="is damaged") as refused:
        train(resume=str(stopped_run))
    assert str(stopped_run / "checkpoint.prev.pt") in str(refused.value)
    # Following the advice works: the previous checkpoint (end of epoch 1) resumes.
    shutil.copyfile(stopped_run / "checkpoint.prev.pt", path)
    assert train(resume=str(stopped_run))["epochs"] == 2


def test_a_data_set_with_another_class_count_is_refused(stopped_run, train_data, tmp_path):
    from fastcifar.train import train
    from fastcifar.training.checkpoint import load_checkpoint, save_checkpoint

    other = shutil.copytree(train_data, tmp_path / "other-data")
    meta_path = other / "synthetic" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["num_classes"], meta["classes"] = 10, meta["classes"][:10]
    meta_path.write_text(json.dumps(meta))
    # The same run, pointed at the other data root.
    state = load_checkpoint(stopped_run / "checkpoint.pt")
    state["config"]["data_root"] = str(other)
    save_checkpoint(stopped_run / "checkpoint.pt", {k: v for k, v in state.items() if k != "format_version"})
    with pytest.raises(UserError, match="100-class model, but synthetic .* has 10 classes"):
        train(resume=str(stopped_run))


def test_a_failed_first_epoch_leaves_no_run_folder(tiny_flags, tmp_path):
    from fastcifar.training.engine import NonFiniteLoss

    def poison(split, images, labels):
        images.fill_(float("nan"))

    out = tmp_path / "runs" / "nan"
    with pytest.raises(NonFiniteLoss):
        train_tiny(tiny_flags, out, batch_hook=poison, log_every=1)
    assert not out.exists() and (tmp_path / "runs").exists()


def test_a_nan_loss_names_the_checkpoint_the_run_kept(tiny_flags, tmp_path):
    """The engine only says the loss diverged; the run says which checkpoint is left on disk."""
    from fastcifar.training.engine import NonFiniteLoss

    steps = []

    def poison_epoch_two(split, images, labels):
        if split == "train":
            steps.append(1)
            if len(steps) > 4:  # 4 steps per epoch
                images.fill_(float("nan"))

    out = tmp_path / "run"
    with pytest.raises(NonFiniteLoss, match=r"the last good checkpoint \(epoch 1\) is kept at") as failed:
        train_tiny(tiny_flags, out, epochs=2, batch_hook=poison_epoch_two, log_every=1)
    assert str(out / "checkpoint.pt") in str(failed.value) and "epoch 2/2" in str(failed.value)


@pytest.mark.parametrize(
    "settings, named, not_named",
    [
        ({"amp": "bf16"}, ["lower --lr, now 0.01"], ["--amp bf16", "--channels_last"]),
        ({"amp": "bf16", "channels_last": True}, ["add --channels_last false"], ["--amp bf16"]),
        ({"amp": "fp16"}, ["use --amp bf16", "lower --lr"], ["--channels_last"]),
    ],
    ids=["bf16", "bf16-channels_last", "fp16"],
)
def test_a_nan_loss_names_the_causes_that_apply_to_the_run(tiny_flags, tmp_path, settings, named, not_named):
    from fastcifar.training.engine import NonFiniteLoss

    def poison(split, images, labels):
        images.fill_(float("nan"))

    with pytest.raises(NonFiniteLoss) as failed:
        train_tiny(tiny_flags, tmp_path / "nan", batch_hook=poison, log_every=1, **settings)
    message = str(failed.value)
    assert message.startswith("training loss became NaN/inf in epoch 1/1; no checkpoint was written; likely causes: ")
    assert all(text in message for text in named) and not any(text in message for text in not_named), message


def test_summary_records_the_kernels_that_ran(tiny_flags, tmp_path, monkeypatch):
    """--kernels triton on a CPU without the Triton interpreter runs the PyTorch reference: recorded as such."""
    import fastcifar.kernels._runtime as runtime

    monkeypatch.setattr(runtime, "INTERPRET", False)
    summary = train_tiny(tiny_flags, tmp_path / "run", kernels="triton")
    assert summary["config"]["kernels"] == "triton" and summary["kernels"] == "torch"
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["kernels"] == "torch"


def test_a_full_disk_keeps_the_last_checkpoint(tiny_flags, tmp_path, monkeypatch):
    import fastcifar.atomic
    from fastcifar.training.checkpoint import load_checkpoint

    disk = {"full": False}
    real_fsync = fastcifar.atomic._fsync

    def fsync(fd):
        if disk["full"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    steps = []

    def fill_in_epoch_two(split, images, labels):
        if split == "train":
            steps.append(1)
            disk["full"] = len(steps) > 4  # from epoch 2's first step on (4 steps per epoch)

    monkeypatch.setattr(fastcifar.atomic, "_fsync", fsync)
    out = tmp_path / "run"
    with pytest.raises(UserError, match="No space left on device") as failed:
        train_tiny(tiny_flags, out, epochs=2, batch_hook=fill_in_epoch_two)
    assert f"--resume {out}" in str(failed.value)
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1  # the last good one, intact
    assert not list(out.glob(".*.tmp"))
