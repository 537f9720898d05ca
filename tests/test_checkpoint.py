"""Checkpoint files: atomic, hashed, plain data only, the previous one kept."""

from __future__ import annotations

import io
import pathlib
import random

import numpy as np
import pytest
import torch

from fastcifar.errors import UserError
from fastcifar.training import checkpoint as ckpt


def test_round_trip_restores_every_generator(tmp_path):
    random.seed(5)
    np.random.seed(6)
    np.random.standard_normal()  # leaves a cached Gaussian in NumPy's state
    torch.manual_seed(7)
    rng = ckpt.capture_rng_state()
    expected = (random.random(), np.random.standard_normal(3), torch.rand(3))
    path = ckpt.save_checkpoint(tmp_path / "checkpoint.pt", {"rng": rng, "epoch": 2, "weights": torch.arange(4)})
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary, no previous yet
    state = ckpt.load_checkpoint(path)
    assert state["epoch"] == 2 and torch.equal(state["weights"], torch.arange(4))
    ckpt.restore_rng_state(state["rng"])
    assert random.random() == expected[0]
    np.testing.assert_array_equal(np.random.standard_normal(3), expected[1])
    torch.testing.assert_close(torch.rand(3), expected[2])


def test_rng_state_is_plain_data():
    """What torch.load(weights_only=True) accepts: tensors, numbers, strings, lists, tuples, dicts."""
    buffer = io.BytesIO()
    torch.save(ckpt.capture_rng_state(), buffer)
    buffer.seek(0)
    torch.load(buffer, weights_only=True)


def test_saving_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    ckpt.save_checkpoint(path, {"epoch": 1})
    ckpt.save_checkpoint(path, {"epoch": 2})
    assert ckpt.load_checkpoint(path)["epoch"] == 2
    assert ckpt.load_checkpoint(ckpt.previous_path(path))["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.prev.pt", "checkpoint.pt"]


def test_changed_bytes_are_detected_and_the_previous_one_named(tmp_path):
    path = tmp_path / "checkpoint.pt"
    ckpt.save_checkpoint(path, {"epoch": 1, "weights": torch.zeros(1000)})
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert not ckpt.verify(path)
    with pytest.raises(UserError, match="is damaged") as no_previous:
        ckpt.load_checkpoint(path)
    assert "previous" not in str(no_previous.value)

    ckpt.save_checkpoint(path, {"epoch": 2, "weights": torch.zeros(1000)})  # damaged one becomes the previous
    ckpt.save_checkpoint(path, {"epoch": 3, "weights": torch.zeros(1000)})  # good epoch 2 becomes the previous
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="is damaged") as with_previous:
        ckpt.load_checkpoint(path)
    message = str(with_previous.value)
    assert str(ckpt.previous_path(path)) in message and "\n" not in message


def test_a_file_without_the_header_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 1}, path)  # a plain torch file: no hash to check
    with pytest.raises(UserError, match="not a fastcifar checkpoint"):
        ckpt.load_checkpoint(path)


class _RunsCode:
    """Unpickling this calls Path.touch(marker): the kind of code a crafted checkpoint can run."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    buffer = io.BytesIO()
    torch.save({"format_version": ckpt.FORMAT_VERSION, "epoch": 1, "evil": _RunsCode(marker)}, buffer)
    payload = buffer.getvalue()
    # The payload is live: an unrestricted load runs its code.
    torch.load(io.BytesIO(payload), weights_only=False)
    assert marker.exists()
    marker.unlink()

    path = tmp_path / "checkpoint.pt"
    path.write_bytes(ckpt.frame(payload))  # a correct hash: only the unpickler can stop it
    with pytest.raises(UserError, match="refusing to load") as refused:
        ckpt.load_checkpoint(path)
    assert "\n" not in str(refused.value)
    assert not marker.exists()


def test_a_failed_write_leaves_the_old_checkpoint_and_no_temporary(tmp_path, monkeypatch):
    import errno

    import fastcifar.atomic

    path = tmp_path / "checkpoint.pt"
    ckpt.save_checkpoint(path, {"epoch": 1})

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fastcifar.atomic, "_fsync", disk_full)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(path, {"epoch": 2})
    assert ckpt.load_checkpoint(path)["epoch"] == 1
    assert not list(tmp_path.glob(".*.tmp"))
